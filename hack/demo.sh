#!/usr/bin/env bash
# The product in one command, without a cluster of your own: a local control plane, the CRD and
# the operator's RBAC, the operator running under its ServiceAccount, and the examples.
# DEMO_KEEP=1 leaves everything running and prints how to reach it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=${DEMO_DIR:-${TMPDIR:-/tmp}/mxcred-demo}
kubectl=$(command -v kubectl || true)
[ -n "$kubectl" ] || { echo "demo: kubectl is needed (apt-get install kubectl, or any recent kubectl on PATH)" >&2; exit 1; }

hack/controlplane.sh stop "$dir" 2>/dev/null || true
rm -rf "$dir"
mkdir -p "$dir"
cleanup() {
  [ -f "$dir/operator.pid" ] && kill "$(cat "$dir/operator.pid")" 2>/dev/null || true
  hack/controlplane.sh stop "$dir"
}
[ "${DEMO_KEEP:-}" = 1 ] || trap cleanup EXIT

echo "== starting a local control plane (etcd, kube-apiserver with RBAC, kube-controller-manager)"
hack/controlplane.sh start "$dir"
export KUBECONFIG=$dir/admin.kubeconfig
k() { "$kubectl" "$@"; }

echo "== installing the CRD and the operator's RBAC"
k apply -f crds/ -f hack/rbac.yaml >/dev/null
k wait --for condition=established crd/mendixcredentials.mxcred.io --timeout=30s >/dev/null

echo "== building and starting the operator under its ServiceAccount"
cargo build --quiet --bin mxcred-operator
token=$(k -n mxcred-system create token mxcred-operator --duration=24h)
sed "s|$(cat "$dir/admin.token")|$token|" "$dir/admin.kubeconfig" >"$dir/operator.kubeconfig"
# The demo never calls the real Mendix platform: only loopback is allowed, and the probes point
# at a local port.
KUBECONFIG=$dir/operator.kubeconfig RUST_LOG=info target/debug/mxcred-operator run \
  --metrics-addr 127.0.0.1:0 --log-format text --allowed-host 127.0.0.1 --allow-http \
  --probe-url DeployApps=http://127.0.0.1:9/api/v4/apps --probe-url DeployV1Apps=http://127.0.0.1:9/api/1/apps \
  >"$dir/operator.log" 2>&1 &
echo $! >"$dir/operator.pid"

echo "== applying examples/ (source Secrets and MendixCredentials in namespace ci)"
k create namespace ci >/dev/null
k apply -f examples/personal-access-token.yaml -f examples/api-key.yaml
k -n ci wait --for condition=Ready mxcred --all --timeout=30s >/dev/null

echo
echo "\$ kubectl get mxcred -A"
k get mxcred -A
for s in deploy-bot-mendix legacy-deployer; do
  echo
  echo "\$ kubectl -n ci get secret $s   (keys; values hidden)"
  k -n ci get secret "$s" -o go-template='{{range $k, $v := .data}}{{printf "  %s\n" $k}}{{end}}'
  k -n ci get secret "$s" -o jsonpath='  fingerprint: {.metadata.annotations.mxcred\.io/token-fingerprint}{"\n"}'
done
echo
echo "== operator log (last lines)"
tail -n 5 "$dir/operator.log"
if [ "${DEMO_KEEP:-}" = 1 ]; then
  echo
  echo "Still running. export KUBECONFIG=$dir/admin.kubeconfig; stop with: hack/controlplane.sh stop $dir; kill $(cat "$dir/operator.pid")"
fi
