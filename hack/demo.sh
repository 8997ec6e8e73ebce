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
  for p in operator simulator; do
    [ -f "$dir/$p.pid" ] && kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
  done
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

echo "== building the operator and the Mendix platform simulator"
cargo build --quiet --workspace --bins

echo "== starting the platform simulator (the demo never calls the real Mendix platform)"
target/debug/mendix-simulator --listen 127.0.0.1:0 \
  --state example-personal-access-token=valid --state ci-bot@example.com:example-api-key=valid \
  --state deleted-token=deleted --state deactivated-user-token=deactivated >"$dir/simulator.out" 2>&1 &
echo $! >"$dir/simulator.pid"
for _ in $(seq 50); do grep -q listening "$dir/simulator.out" && break; sleep 0.1; done
platform=$(sed -n 's/^listening on //p' "$dir/simulator.out")

echo "== starting the operator under its ServiceAccount"
token=$(k -n mxcred-system create token mxcred-operator --duration=24h)
sed "s|$(cat "$dir/admin.token")|$token|" "$dir/admin.kubeconfig" >"$dir/operator.kubeconfig"
# Only loopback is allowed, and the probes point at the simulator.
KUBECONFIG=$dir/operator.kubeconfig RUST_LOG=info target/debug/mxcred-operator run \
  --metrics-addr 127.0.0.1:0 --log-format text --allowed-host 127.0.0.1 --allow-http \
  --probe-url "DeployApps=$platform/api/v4/apps?limit=1" --probe-url "DeployV1Apps=$platform/api/1/apps" \
  >"$dir/operator.log" 2>&1 &
echo $! >"$dir/operator.pid"

echo "== applying examples/ (source Secrets and MendixCredentials in namespace ci)"
k create namespace ci >/dev/null
k apply -f examples/personal-access-token.yaml -f examples/api-key.yaml -f hack/demo-credentials.yaml
k -n ci wait --for condition=Ready mxcred --all --timeout=30s >/dev/null
for _ in $(seq 100); do
  [ "$(k -n ci get mxcred -o jsonpath='{.items[*].status.lastVerifiedTime}' | wc -w)" -ge 4 ] && break
  sleep 0.2
done

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
echo "\$ kubectl -n ci get events --field-selector type=Warning"
k -n ci get events.events.k8s.io --field-selector type=Warning
echo
echo "\$ mxcred-operator verify --token-env MENDIX_TOKEN   (a CI step's check)"
MENDIX_TOKEN=deleted-token target/debug/mxcred-operator verify --token-env MENDIX_TOKEN \
  --allowed-host 127.0.0.1 --allow-http --probe-url "DeployApps=$platform/api/v4/apps?limit=1" || echo "(exit code $?)"
if [ "${DEMO_KEEP:-}" = 1 ]; then
  echo
  echo "Still running. export KUBECONFIG=$dir/admin.kubeconfig; stop with: hack/controlplane.sh stop $dir; kill $(cat "$dir/operator.pid")"
fi
