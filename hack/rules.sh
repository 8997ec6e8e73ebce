#!/usr/bin/env bash
# Prints the chart's alerting rules as a Prometheus rule file: the `spec` of the PrometheusRule
# that `helm template` renders with the default alert values, release `mxcred-operator` in
# namespace `mxcred-system`. `make rules` writes it to tests/prometheus/rules.yaml, where the
# promtool unit tests beside it read it; tests/alerts.rs fails when that copy is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(hack/helm.sh)
echo "# Rendered from charts/mxcred-operator by \`make rules\` (hack/rules.sh): do not edit."
"$tools/helm" template mxcred-operator charts/mxcred-operator --namespace mxcred-system \
  --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml "$@" |
  awk 'found { print substr($0, 3) } /^spec:/ { found = 1 }'
