#!/usr/bin/env bash
# `make image`: builds the shipped stage of the Dockerfile around a static binary built here,
# with nothing pulled from a registry, and writes it as an OCI archive:
#
#   target/image/mxcred-operator.tar   (oci-archive, reference mxcred-operator:dev)
#
# The binary: cargo build --release for the host target with crt-static (glibc, linked
# statically; the musl target cannot be installed offline). The Dockerfile's `build` stage is
# replaced by target/image/build (--build-context), so the `FROM scratch` stage users get from
# `docker build .` is the one tested. Needs buildah (hack/deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(rustc -vV | sed -n 's/^host: //p')
out=target/image
mkdir -p "$out"
log() { echo "image: $*" >&2; }

command -v buildah >/dev/null || { log "buildah is missing: run hack/deps.sh (apt-get install buildah)"; exit 1; }

# A target directory of its own: tests/image.rs runs this script while `cargo test` holds the
# lock of target/.
env "CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=-C target-feature=+crt-static" \
  cargo build --quiet --release --locked --target "$target" --target-dir "$out/cargo" \
  -p mxcred-operator --bin mxcred-operator
binary=$out/cargo/$target/release/mxcred-operator
if ldd "$binary" 2>&1 | grep -q "=>"; then
  log "$binary is dynamically linked; the image has no libc"
  exit 1
fi

hack/image-rootfs.sh "$binary" /etc/ssl/certs/ca-certificates.crt "$out/build/rootfs"

# A storage of our own under target/: nothing is shared with other images on the machine.
storage=(--root "$PWD/$out/storage" --runroot "$PWD/$out/run" --storage-driver vfs)
buildah "${storage[@]}" build --quiet --pull=never --layers=false \
  --build-context "build=$PWD/$out/build" -f Dockerfile -t localhost/mxcred-operator:dev . >/dev/null
rm -f "$out/mxcred-operator.tar"
buildah "${storage[@]}" push --quiet localhost/mxcred-operator:dev \
  "oci-archive:$PWD/$out/mxcred-operator.tar:mxcred-operator:dev"
buildah "${storage[@]}" rmi --all >/dev/null 2>&1 || true
log "$out/mxcred-operator.tar ($(du -h "$out/mxcred-operator.tar" | cut -f1))"
