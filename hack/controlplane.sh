#!/usr/bin/env bash
# Starts and stops a real Kubernetes control plane (etcd, kube-apiserver with RBAC,
# kube-controller-manager with the garbage collector) on free loopback ports, envtest-style.
#
#   hack/controlplane.sh start DIR [--watch-pid PID] [--serving-ca] [--no-controller-manager]
#                                   start; with --watch-pid, when PID exits (however it exits):
#                                   stop, and remove DIR unless MXCRED_KEEP_TEST_DIR=1; with
#                                   --serving-ca, kube-apiserver serves a certificate signed by a
#                                   CA made here (DIR/pki/ca.crt), valid for 127.0.0.1, localhost
#                                   and kubernetes.default.svc, so that clients can verify TLS;
#                                   with --no-controller-manager, without it (see below)
#   hack/controlplane.sh controller-manager DIR  start kube-controller-manager. Its garbage
#                                   collector finds the kinds of CRDs created after it started
#                                   only at its next discovery, up to 30 s later (owned objects of
#                                   those kinds wait that long): start it once the CRDs are in
#   hack/controlplane.sh stop DIR   stop it, and every process whose pid file (DIR/*.pid) is in
#                                   DIR: the demo's operator and simulator, a test's operators
#   hack/controlplane.sh restart-apiserver DIR [SECONDS]  stop the apiserver, wait, start it again
#
# DIR receives admin.kubeconfig, certs/, logs and the pids. Binaries come from
# hack/controlplane-bins.sh (KUBEBUILDER_ASSETS, or a cache built once).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?usage: controlplane.sh start|stop|controller-manager|restart-apiserver DIR}
dir=${2:?usage: controlplane.sh start|stop|controller-manager|restart-apiserver DIR}
shift 2

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() {
  local deadline=$((SECONDS + 90))
  until curl -skf -H "Authorization: Bearer $(cat "$dir/admin.token")" \
      "https://127.0.0.1:$(cat "$dir/apiserver.port")/readyz" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "controlplane: kube-apiserver not ready after 90 s; see $dir/kube-apiserver.log" >&2
      tail -n 20 "$dir/kube-apiserver.log" >&2
      return 1
    fi
    if ! kill -0 "$(cat "$dir/kube-apiserver.pid")" 2>/dev/null; then
      echo "controlplane: kube-apiserver exited; see $dir/kube-apiserver.log" >&2
      tail -n 20 "$dir/kube-apiserver.log" >&2
      return 1
    fi
    sleep 0.3
  done
}

start_apiserver() {
  local bins tls=()
  bins=$(cat "$dir/bins")
  if [ -f "$dir/pki/apiserver.crt" ]; then
    tls=(--tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key")
  fi
  "$bins/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$(cat "$dir/etcd.port")" \
    --bind-address 127.0.0.1 --secure-port "$(cat "$dir/apiserver.port")" \
    --cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$dir/sa.key" --service-account-signing-key-file "$dir/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --disable-admission-plugins ServiceAccount "${tls[@]}" \
    >>"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
}

# A CA and a serving certificate it signed, for --serving-ca.
make_pki() {
  local pki=$dir/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mxcred-test-ca \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc' \
    'extendedKeyUsage=serverAuth' 'basicConstraints=CA:FALSE' >"$pki/ext.cnf"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$pki/ext.cnf" -out "$pki/apiserver.crt" 2>/dev/null
}

stop_pid() {
  local f=$dir/${1%.pid}.pid
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

# The garbage collector and the namespace controller.
start_controller_manager() {
  local bins
  bins=$(cat "$dir/bins")
  "$bins/kube-controller-manager" --kubeconfig "$dir/admin.kubeconfig" \
    --controllers=garbagecollector,namespace --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 >"$dir/kube-controller-manager.log" 2>&1 &
  echo $! >"$dir/kube-controller-manager.pid"
}

case "$cmd" in
start)
  watch_pid=""
  serving_ca=""
  no_controller_manager=""
  while [ $# -gt 0 ]; do
    case $1 in
      --watch-pid) watch_pid=${2:?}; shift 2 ;;
      --serving-ca) serving_ca=1; shift ;;
      --no-controller-manager) no_controller_manager=1; shift ;;
      *) echo "controlplane: unknown option $1" >&2; exit 2 ;;
    esac
  done
  mkdir -p "$dir/certs"
  if [ -n "$watch_pid" ]; then
    # Started first, so that a start failing half-way is cleaned up too. Removing DIR also
    # removes what the test binary wrote there (logs, kubeconfigs).
    remove=1
    [ "${MXCRED_KEEP_TEST_DIR:-}" = 1 ] && remove=0
    setsid bash -c "while kill -0 $watch_pid 2>/dev/null; do sleep 1; done; '$0' stop '$dir'; \
      [ $remove = 1 ] && rm -rf '$dir'" </dev/null >/dev/null 2>&1 &
  fi
  bins=$("$here/controlplane-bins.sh")
  echo "$bins" >"$dir/bins"
  free_port >"$dir/etcd.port"
  free_port >"$dir/etcd-peer.port"
  free_port >"$dir/apiserver.port"
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token" >"$dir/admin.token"
  echo "$token,admin,admin-uid,system:masters" >"$dir/tokens.csv"
  [ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  [ -z "$serving_ca" ] || make_pki

  "$bins/etcd" --data-dir "$dir/etcd" --name default \
    --listen-client-urls "http://127.0.0.1:$(cat "$dir/etcd.port")" \
    --advertise-client-urls "http://127.0.0.1:$(cat "$dir/etcd.port")" \
    --listen-peer-urls "http://127.0.0.1:$(cat "$dir/etcd-peer.port")" \
    --initial-advertise-peer-urls "http://127.0.0.1:$(cat "$dir/etcd-peer.port")" \
    --initial-cluster "default=http://127.0.0.1:$(cat "$dir/etcd-peer.port")" \
    --unsafe-no-fsync >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  start_apiserver

  cat >"$dir/admin.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$(cat "$dir/apiserver.port")
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KC
  wait_ready

  [ -n "$no_controller_manager" ] || start_controller_manager

  echo "controlplane: ready at https://127.0.0.1:$(cat "$dir/apiserver.port") (kubeconfig $dir/admin.kubeconfig)" >&2
  ;;
stop)
  # Clients first (operators, simulators), then the control plane.
  for f in "$dir"/*.pid; do
    case ${f##*/} in
      kube-controller-manager.pid | kube-apiserver.pid | etcd.pid) ;;
      *) stop_pid "${f##*/}" ;;
    esac
  done
  stop_pid kube-controller-manager
  stop_pid kube-apiserver
  stop_pid etcd
  ;;
controller-manager)
  start_controller_manager
  ;;
restart-apiserver)
  stop_pid kube-apiserver
  sleep "${1:-0}"
  start_apiserver
  wait_ready
  ;;
*)
  echo "unknown command $cmd" >&2
  exit 2
  ;;
esac
