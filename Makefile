# mxcred-operator: the two commands a newcomer needs are `make demo` and `make test`.

CARGO ?= cargo
CRD := crds/mendixcredentials.mxcred.io.yaml
CLUSTER_CRD := crds/clustermendixcredentials.mxcred.io.yaml
CHART := charts/mxcred-operator

.PHONY: test demo controlplane deps lint actionlint crds reference docs bench chart chart-package image rules soak-leader

# The Kubernetes versions `make test` runs the suite on: the newest and the oldest supported,
# named in hack/kubernetes-versions.env (`make test KUBERNETES=1.30.14` runs it on one version).
KUBERNETES ?= newest oldest

## test: install what is missing, then fmt check, clippy, actionlint, the book and every test (unit
## and real control plane), on each of $(KUBERNETES)
test: deps controlplane lint actionlint chart docs
	@for k in $(KUBERNETES); do \
	  echo "test: the suite on Kubernetes $$k ($$(hack/controlplane-bins.sh $$k))"; \
	  start=$$(date +%s); \
	  MXCRED_KUBERNETES=$$k $(CARGO) test --workspace --lib --bins --tests || exit 1; \
	  echo "test: Kubernetes $$k passed in $$(( $$(date +%s) - start )) s"; \
	done

## demo: a local control plane, the operator, the examples; prints what it publishes
demo: deps
	@hack/controlplane-bins.sh newest >/dev/null
	hack/demo.sh

## controlplane: etcd, kube-apiserver and kube-controller-manager of each of $(KUBERNETES), built
## once and cached
controlplane:
	@for k in $(KUBERNETES); do hack/controlplane-bins.sh $$k >/dev/null || exit 1; done

## deps: the Debian packages the scripts use
deps:
	@hack/deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## image: the shipped image, built from the Dockerfile with no registry, as an OCI archive at
## target/image/mxcred-operator.tar (reference mxcred-operator:dev)
image: deps
	hack/image.sh

## rules: regenerate tests/prometheus/rules.yaml (the chart's alerts, for the promtool tests beside it)
rules:
	hack/rules.sh > tests/prometheus/rules.yaml

## actionlint: check .github/workflows/ (actionlint installed once by hack/actionlint.sh)
actionlint:
	@"$$(hack/actionlint.sh)" -color=never .github/workflows/*.yaml

## crds: regenerate the committed CRD, the chart's copy and the book's reference pages
crds:
	$(CARGO) run --quiet -- crd --file $(notdir $(CRD)) > $(CRD)
	$(CARGO) run --quiet -- crd --file $(notdir $(CLUSTER_CRD)) > $(CLUSTER_CRD)
	cp $(CRD) $(CHART)/files/$(CRD)
	cp $(CLUSTER_CRD) $(CHART)/files/$(CLUSTER_CRD)
	@$(MAKE) --no-print-directory reference

## reference: regenerate the book's API reference pages (docs/reference/) from the CRDs
REFERENCE_PAGES := mendixcredential.md clustermendixcredential.md
reference:
	@for page in $(REFERENCE_PAGES); do \
	  $(CARGO) run --quiet -- reference --file $$page > docs/reference/$$page || exit 1; \
	done

## docs: the book (docs/, mdBook from crates.io, cached by hack/mdbook.sh) built into target/book;
## fails on a link to a missing page or heading, or a page SUMMARY.md does not list
docs:
	@mdbook=$$(hack/mdbook.sh) && "$$mdbook/mdbook" build --dest-dir target/book docs
	$(CARGO) test --test docs -- book_

## chart: helm lint and helm template of charts/mxcred-operator, with default values and each ci/*.yaml
chart:
	@for crd in $(CRD) $(CLUSTER_CRD); do \
	  cmp -s $$crd $(CHART)/files/$$crd || { echo "chart: $(CHART)/files/$$crd differs from $$crd: copy it" >&2; exit 1; }; \
	done
	@tools=$$(hack/helm.sh) && set -e && \
	for values in "" $(CHART)/ci/*.yaml; do \
	  echo "chart: $${values:-default values}"; \
	  "$$tools/helm" lint --strict --quiet $(CHART) --namespace mxcred-system $${values:+--values $$values}; \
	  "$$tools/helm" template mxcred-operator $(CHART) --namespace mxcred-system $${values:+--values $$values} >/dev/null; \
	done

## bench: the scale benchmark (N = 100, 1000, 5000) on a local control plane; figures in target/bench/scale.csv
bench: deps
	@hack/controlplane-bins.sh newest >/dev/null
	$(CARGO) bench --bench scale

## chart-package: the chart as target/chart/mxcred-operator-VERSION.tgz, its version and appVersion
## VERSION (default: the crate's), its image IMAGE_REPOSITORY pinned to IMAGE_DIGEST when given
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE_REPOSITORY ?=
IMAGE_DIGEST ?=
chart-package: chart
	@rm -rf target/chart && mkdir -p target/chart && cp -r $(CHART) target/chart/src
	@if [ -n "$(IMAGE_REPOSITORY)" ]; then \
	  sed -i 's|^  repository: .*|  repository: $(IMAGE_REPOSITORY)|' target/chart/src/values.yaml; fi
	@if [ -n "$(IMAGE_DIGEST)" ]; then \
	  sed -i 's|^  digest: ""|  digest: "$(IMAGE_DIGEST)"|' target/chart/src/values.yaml; fi
	@tools=$$(hack/helm.sh) && "$$tools/helm" lint --strict --quiet target/chart/src && \
	  "$$tools/helm" package target/chart/src --version $(VERSION) --app-version $(VERSION) -d target/chart

## soak-leader: the leader election stress test with many rounds (MXCRED_LEADER_ROUNDS, default 100; 2 to 3 s each)
soak-leader: deps
	@hack/controlplane-bins.sh newest >/dev/null
	MXCRED_LEADER_ROUNDS=$${MXCRED_LEADER_ROUNDS:-100} $(CARGO) test --test leader instances_started_together -- --nocapture
