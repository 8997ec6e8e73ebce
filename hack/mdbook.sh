#!/usr/bin/env bash
# Prints the path of a directory holding `mdbook`, for `make docs` and tests/docs.rs.
#
# mdBook comes from crates.io: built once with `cargo install --locked` into a cache outside the
# repository ($MXCRED_CACHE_DIR, default ~/.cache/mxcred-operator, under tools/), then reused, so
# that later builds of the book need no network.
set -euo pipefail

VERSION=0.5.4
cache=${MXCRED_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mxcred-operator}
dir="$cache/tools/mdbook-$VERSION"

if [ -x "$dir/bin/mdbook" ]; then
  echo "$dir/bin"
  exit 0
fi

log() { echo "mdbook.sh: $*" >&2; }

command -v cargo >/dev/null || {
  log "cargo is needed to build mdbook (https://rustup.rs)"
  exit 1
}

mkdir -p "$cache/tools"
work=$(mktemp -d "$cache/tools/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "building mdbook $VERSION from crates.io (once, a few minutes)"
# Only the HTML renderer with its search index: no `serve` or `watch` (an HTTP server and a file
# watcher the scripts never use). Its own target directory, so that CARGO_TARGET_DIR is not used.
CARGO_TARGET_DIR="$work/target" cargo install --quiet --locked --no-default-features \
  --features search --root "$work/root" "mdbook@$VERSION" >&2
"$work/root/bin/mdbook" --version >/dev/null

# A concurrent run may have finished first: its copy is as good as ours.
mkdir -p "$work/out/bin" && mv "$work/root/bin/mdbook" "$work/out/bin/"
mv -T "$work/out" "$dir" 2>/dev/null || [ -x "$dir/bin/mdbook" ]
log "cached mdbook $VERSION in $dir"
echo "$dir/bin"
