#!/usr/bin/env bash
# Installs the Debian packages the test and demo scripts use, when they are missing.
set -euo pipefail
missing=()
# The image test (buildah, skopeo, umoci, runc), the monitoring tests (prometheus, promtool), the
# Argo CD health check (lua5.1) and the egress proxy test (tinyproxy) use the rest.
for tool in curl:curl openssl:openssl python3:python3 buildah:buildah skopeo:skopeo umoci:umoci \
    runc:runc prometheus:prometheus promtool:prometheus lua5.1:lua5.1 tinyproxy:tinyproxy; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
