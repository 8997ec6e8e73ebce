# mxcred-operator: the two commands a newcomer needs are `make demo` and `make test`.

CARGO ?= cargo
CRD := crds/mendixcredentials.mxcred.io.yaml

.PHONY: test demo controlplane deps lint crds bench chart soak-leader

## test: install what is missing, then fmt check, clippy and every test (unit and real control plane)
test: deps controlplane lint chart
	$(CARGO) test --workspace --lib --bins --tests

## demo: a local control plane, the operator, the examples; prints what it publishes
demo: deps controlplane
	hack/demo.sh

## controlplane: etcd, kube-apiserver and kube-controller-manager, built once and cached
controlplane:
	@hack/controlplane-bins.sh >/dev/null

## deps: the Debian packages the scripts use
deps:
	@hack/deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## crds: regenerate the committed CRD
crds:
	$(CARGO) run --quiet -- crd > $(CRD)

## chart: helm lint and helm template of charts/mxcred-operator, with default values and each ci/*.yaml
CHART := charts/mxcred-operator
chart:
	@cmp -s $(CRD) $(CHART)/$(CRD) || { echo "chart: $(CHART)/$(CRD) differs from $(CRD): copy it" >&2; exit 1; }
	@tools=$$(hack/helm.sh) && set -e && \
	for values in "" $(CHART)/ci/*.yaml; do \
	  echo "chart: $${values:-default values}"; \
	  "$$tools/helm" lint --strict --quiet $(CHART) --namespace mxcred-system $${values:+--values $$values}; \
	  "$$tools/helm" template mxcred-operator $(CHART) --namespace mxcred-system $${values:+--values $$values} >/dev/null; \
	done

## bench: the scale benchmark (N = 100, 1000, 5000) on a local control plane; figures in target/bench/scale.csv
bench: deps controlplane
	$(CARGO) bench --bench scale

## soak-leader: the leader election stress test with many rounds (MXCRED_LEADER_ROUNDS, default 100; 2 to 3 s each)
soak-leader: deps controlplane
	MXCRED_LEADER_ROUNDS=$${MXCRED_LEADER_ROUNDS:-100} $(CARGO) test --test leader instances_started_together -- --nocapture
