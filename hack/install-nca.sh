#!/usr/bin/env bash
# Installs the pinned network-config-analyzer (nca), an independent offline
# NetworkPolicy evaluator, into target/tools/nca: a Python venv under
# target/tools, nothing machine-wide. The egress tests check the policies the
# controller writes with it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

NCA_VERSION=2.1.0
TOOLS="${TOOLS_DIR:-$PWD/target/tools}"
VENV="$TOOLS/nca-venv"
NCA="$TOOLS/nca"

if [[ -x "$NCA" && -f "$VENV/.version-$NCA_VERSION" ]]; then
  exit 0
fi
echo "installing network-config-analyzer $NCA_VERSION into $TOOLS" >&2
mkdir -p "$TOOLS"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "network-config-analyzer==$NCA_VERSION"
ln -sfn "nca-venv/bin/nca" "$NCA"
touch "$VENV/.version-$NCA_VERSION"
"$NCA" --help >/dev/null
