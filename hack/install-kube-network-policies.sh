#!/usr/bin/env bash
# Installs what the egress enforcement test (tests/enforce.rs) runs:
#  - SIG Network's kube-network-policies, pinned, built from the Go module
#    proxy into target/tools (nothing machine-wide);
#  - iptables from Debian, when missing (the test diverts packets to the
#    enforcer's NFQUEUE with it where the kernel lacks nft_queue).
# Idempotent: does nothing when both are there.
set -euo pipefail
cd "$(dirname "$0")/.."

KNP_VERSION=v0.8.0
TOOLS="${TOOLS_DIR:-$PWD/target/tools}"
KNP="$TOOLS/kube-network-policies"

if ! command -v iptables >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing iptables from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iptables >/dev/null
  else
    echo "iptables is missing: install it (Debian: apt-get install iptables)" >&2
    exit 1
  fi
fi

if [[ -x "$KNP" && -f "$TOOLS/.kube-network-policies-$KNP_VERSION" ]]; then
  exit 0
fi
echo "building kube-network-policies $KNP_VERSION into $TOOLS (several minutes)" >&2
mkdir -p "$TOOLS/knp-gobin"
GOBIN="$TOOLS/knp-gobin" CGO_ENABLED=0 GOFLAGS=-mod=mod go install "sigs.k8s.io/kube-network-policies/cmd@$KNP_VERSION"
mv "$TOOLS/knp-gobin/cmd" "$KNP"
rmdir "$TOOLS/knp-gobin"
touch "$TOOLS/.kube-network-policies-$KNP_VERSION"
