#!/usr/bin/env bash
# Provides etcd, kube-apiserver and kube-controller-manager for the tests and the demo, and
# prints the directory that holds them (the KUBEBUILDER_ASSETS convention).
#
#   hack/controlplane-bins.sh [newest|oldest|1.X.Y]    (default: $MXCRED_KUBERNETES, else newest)
#
# Order: $KUBEBUILDER_ASSETS if it holds the binaries; else a cache outside the repository
# ($MXCRED_CACHE_DIR, default ~/.cache/mxcred-operator, under controlplane-<version>/); else
# built once from the Go module proxy (docs/testenv.md) and cached there: kube-apiserver and
# kube-controller-manager from `k8s.io/kubernetes` through a wrapper module, etcd from
# `go.etcd.io/etcd/server/v3`. The versions are named in hack/kubernetes-versions.env.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=kubernetes-versions.env
. "$here/kubernetes-versions.env"

wanted=${1:-${MXCRED_KUBERNETES:-newest}}
case $wanted in
  newest) version=$KUBERNETES_NEWEST ;;
  oldest) version=$KUBERNETES_OLDEST ;;
  1.*.*) version=$wanted ;;
  *) echo "controlplane-bins: unknown Kubernetes version $wanted (newest, oldest or 1.X.Y)" >&2; exit 2 ;;
esac
cache=${MXCRED_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mxcred-operator}
bin_dir="$cache/controlplane-$version"

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
controlplane-bins: etcd, kube-apiserver and kube-controller-manager $version were not found.
Get them with one of:
  make controlplane                 (builds them once from the Go module proxy into $bin_dir)
  export KUBEBUILDER_ASSETS=DIR      (a directory from setup-envtest holding etcd and kube-apiserver)
MSG
  exit 1
fi

command -v go >/dev/null || {
  log "Go 1.26 or newer is needed to build the control plane (https://go.dev/dl, or set KUBEBUILDER_ASSETS)"
  exit 1
}
# The machine's Go, never a toolchain download named by a module.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -modcacherw"

minor=${version#1.}
minor=${minor%%.*}
work="$cache/build-$version"
rm -rf "$work"
mkdir -p "$work/kubernetes" "$work/etcd" "$work/bin"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

# A module in the current directory that requires MODULE at VERSION.
wrapper_module() {
  printf 'module mxcred.io/%s\n\ngo 1.22\n\nrequire %s v%s\n' "$1" "$2" "$3" >go.mod
}

# Runs a command with its output appended to LOG; on failure, shows LOG's end and stops.
logged() {
  local log=$1
  shift
  "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
}

# k8s.io/kubernetes maps its staging modules (k8s.io/api, k8s.io/apiserver, ...) to ./staging in
# its own go.mod, which a dependent module does not see: the wrapper requires each at the
# published v0.<minor>.<patch> that goes with the release.
log "building kube-apiserver and kube-controller-manager $version from the Go module proxy (once; about 10 minutes on 2 cores)"
cd "$work/kubernetes"
wrapper_module controlplane k8s.io/kubernetes "$version"
go mod download -json "k8s.io/kubernetes@v$version" >download.json || { cat download.json >&2; exit 1; }
kmod=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])' <download.json)
sed -nE 's/^[[:space:]]+(k8s\.io\/[a-z0-9-]+) v0\.0\.0$/\1/p' "$kmod" | sort -u | while read -r module; do
  echo "replace $module => $module v0.${version#1.}" >>go.mod
done
cat >tools.go <<'GO'
//go:build tools

// The commands this module builds; the import keeps `go mod tidy` from dropping them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO
logged "$work/kubernetes.log" go mod tidy
# The version the binaries report (`/version`, `kubectl version`, Helm's .Capabilities), set as
# Kubernetes's own build sets it; without it they report v0.0.0.
ldflags="-s -w"
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $package.gitVersion=v$version -X $package.gitMajor=1 -X $package.gitMinor=$minor"
  ldflags="$ldflags -X $package.gitTreeState=clean -X $package.buildDate=1970-01-01T00:00:00Z"
done
logged "$work/kubernetes.log" go build -trimpath -ldflags="$ldflags" -o "$work/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
log "kube-apiserver and kube-controller-manager $version built in $((SECONDS - started)) s"

etcd_started=$SECONDS
log "building etcd $ETCD_VERSION from the Go module proxy"
cd "$work/etcd"
wrapper_module etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
cat >main.go <<'GO'
// etcd's own command, as its release binary runs it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
logged "$work/etcd.log" go mod tidy
logged "$work/etcd.log" go build -trimpath -ldflags="-s -w" -o "$work/bin/etcd" .
log "etcd $ETCD_VERSION built in $((SECONDS - etcd_started)) s"

mkdir -p "$bin_dir"
mv "$work/bin/etcd" "$work/bin/kube-apiserver" "$work/bin/kube-controller-manager" "$bin_dir/"
have_all "$bin_dir"
log "cached in $bin_dir (cold build: $((SECONDS - started)) s)"
echo "$bin_dir"
