#!/usr/bin/env bash
# Provides etcd, kube-apiserver and kube-controller-manager for the tests and the demo, and
# prints the directory that holds them (the KUBEBUILDER_ASSETS convention).
#
# Order: $KUBEBUILDER_ASSETS if it holds the binaries; else a cache outside the repository
# ($MXCRED_CACHE_DIR, default ~/.cache/mxcred-operator); else built once from Debian's own
# `kubernetes` source package (see ../shared/TESTENV.md), which takes 6-10 minutes on 2 cores.
set -euo pipefail

K8S_VERSION=1.20.2
cache=${MXCRED_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mxcred-operator}
bin_dir="$cache/controlplane-$K8S_VERSION"

log() { echo "controlplane-bins: $*" >&2; }

have_all() {
  [ -x "$1/etcd" ] && [ -x "$1/kube-apiserver" ] && [ -x "$1/kube-controller-manager" ]
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
if have_all "$bin_dir"; then
  echo "$bin_dir"
  exit 0
fi

if [ "${MXCRED_NO_BUILD:-}" = 1 ]; then
  cat >&2 <<MSG
controlplane-bins: etcd, kube-apiserver and kube-controller-manager were not found.
Get them with one of:
  make controlplane                 (builds them once from Debian's packages into $bin_dir)
  export KUBEBUILDER_ASSETS=DIR      (a directory from setup-envtest holding etcd and kube-apiserver)
MSG
  exit 1
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$bin_dir"

if ! command -v etcd >/dev/null; then
  log "installing etcd-server"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq etcd-server >/dev/null
fi
ln -sf "$(command -v etcd)" "$bin_dir/etcd"

log "building kube-apiserver and kube-controller-manager $K8S_VERSION from Debian's source package (once)"
if [ ! -f /etc/apt/sources.list.d/mxcred-deb-src.sources ]; then
  $sudo tee /etc/apt/sources.list.d/mxcred-deb-src.sources >/dev/null <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq golang-go rsync golang-github-modern-go-reflect2-dev make >/dev/null

work="$cache/build"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
apt-get source --download-only kubernetes >/dev/null
tar xzf kubernetes_*.orig.tar.gz
src=$(find . -maxdepth 1 -mindepth 1 -type d | head -n 1)
cd "$src"
# The vendored reflect2 1.0.1 predates Go 1.18: the apiserver built with it crashes (SIGSEGV in
# reflect.mapiterinit) on the first custom resource it serialises. Debian's packaged copy works.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod
CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/make.log" 2>&1 || {
  tail -n 40 "$work/make.log" >&2
  exit 1
}
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$bin_dir/"
cd /
rm -rf "$work"
have_all "$bin_dir"
log "cached in $bin_dir"
echo "$bin_dir"
