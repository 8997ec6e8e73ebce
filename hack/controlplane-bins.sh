#!/usr/bin/env bash
# Provides etcd, kube-apiserver and kube-controller-manager for the tests and the demo, and
# prints the directory that holds them (the KUBEBUILDER_ASSETS convention).
#
# Order: $KUBEBUILDER_ASSETS if it holds the binaries; else a cache outside the repository
# ($MXCRED_CACHE_DIR, default ~/.cache/mxcred-operator); else built once from Debian's own
# `kubernetes` source package (docs/testenv.md), which takes 6-10 minutes on 2 cores.
#
# Building needs the source package, so apt needs a deb-src entry for bookworm main. When none
# is configured, this script adds one (/etc/apt/sources.list.d/mxcred-deb-src.sources) and says
# so; an existing one is used as it is, never repeated (apt would warn "configured multiple
# times" on every later run).
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

# Whether apt already has a deb-src entry for bookworm main, in the one-line format
# (sources.list, *.list) or the deb822 format (*.sources).
has_deb_src() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    grep -Eq '^[[:space:]]*deb-src([[:space:]]+\[[^]]*\])?[[:space:]]+[^[:space:]]+[[:space:]]+bookworm([[:space:]]+[^[:space:]#]+)*[[:space:]]+main([[:space:]]|$)' "$f" && return 0
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function check() { if (types ~ /(^| )deb-src( |$)/ && suites ~ /(^| )bookworm( |$)/ && comps ~ /(^| )main( |$)/ && enabled !~ /^no$/) found = 1 }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { check(); types = suites = comps = enabled = ""; next }
      { key = tolower($1); sub(/^[^:]*:[[:space:]]*/, "") }
      key == "types:" { types = $0 } key == "suites:" { suites = $0 }
      key == "components:" { comps = $0 } key == "enabled:" { enabled = $0 }
      END { check(); exit found ? 0 : 1 }
    ' "$f" && return 0
  done
  return 1
}

log "building kube-apiserver and kube-controller-manager $K8S_VERSION from Debian's source package (once)"
if ! has_deb_src; then
  added=/etc/apt/sources.list.d/mxcred-deb-src.sources
  log "apt has no deb-src entry for bookworm main: adding $added (remove it afterwards if you like)"
  $sudo tee "$added" >/dev/null <<SRC
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
