#!/usr/bin/env bash
# Builds the pinned Helm from the Go module proxy into target/tools/helm (no
# prebuilt download), with the link flags of Helm's own release build so that
# `helm version` and the Kubernetes version `helm template`/`lint` assume
# without a cluster (.Capabilities.KubeVersion, lint's deprecated-API check)
# are right: without them Helm assumes Kubernetes 1.20.
# Idempotent: does nothing when the pinned version is already there.
#
# Helm 3 (not 4): the chart uses apiVersion v2, which both read; Helm 3 is
# what most clusters' pipelines run today, so linting with it proves the
# chart works for them. The chart does not depend on Helm 4 behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.22.0
# Kubernetes version Helm assumes without a cluster: Helm's release build
# derives it from its client-go module (v0.37.x -> 1.37).
K8S_MAJOR=1
K8S_MINOR=37
TOOLS="${TOOLS_DIR:-$PWD/target/tools}"
HELM="$TOOLS/helm"

if [[ -x "$HELM" ]] && [[ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
  exit 0
fi
mkdir -p "$TOOLS"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags+=" -X $pkg.k8sVersionMajor=$K8S_MAJOR -X $pkg.k8sVersionMinor=$K8S_MINOR"
done
echo "building helm $HELM_VERSION into $TOOLS" >&2
GOBIN="$TOOLS" CGO_ENABLED=0 GOFLAGS=-trimpath go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
"$HELM" version --template '{{.Version}}' | grep -qx "$HELM_VERSION"
