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
	$(CARGO) test --all-targets --locked

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
