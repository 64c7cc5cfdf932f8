#!/usr/bin/env bash
# Builds the pinned promtool (Prometheus's rule checker and rule unit-test
# runner) from the Go module proxy into target/tools/promtool: no prebuilt
# download. The version is the one hack/tools/promtool/go.mod requires
# (Prometheus 3.x modules are tagged v0.3MM.P for release 3.MM.P).
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

MODULE_DIR=hack/tools/promtool
TOOLS="${TOOLS_DIR:-$PWD/target/tools}"
PROMTOOL="$TOOLS/promtool"

module_version=$(sed -n 's/^require github.com\/prometheus\/prometheus \(v[0-9.]*\)$/\1/p' "$MODULE_DIR/go.mod")
if [[ ! "$module_version" =~ ^v0\.3([0-9][0-9])\.([0-9]+)$ ]]; then
  echo "install-promtool.sh: cannot read the Prometheus 3.x version from $MODULE_DIR/go.mod (got '$module_version')" >&2
  exit 1
fi
version="3.$((10#${BASH_REMATCH[1]})).${BASH_REMATCH[2]}"

if [[ -x "$PROMTOOL" ]] && "$PROMTOOL" --version 2>/dev/null | grep -q "version $version "; then
  exit 0
fi
mkdir -p "$TOOLS"
echo "building promtool $version into $TOOLS" >&2
# The version flag makes `promtool --version` say what it is (and lets the
# check above see it); -s -w drop debug info nobody here needs.
CGO_ENABLED=0 go build -C "$MODULE_DIR" -trimpath \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=$version" \
  -o "$PROMTOOL" github.com/prometheus/prometheus/cmd/promtool
"$PROMTOOL" --version | grep -q "version $version "
