#!/usr/bin/env bash
# Renders the plain-YAML install (deploy/manifests/) from the Helm chart with
# its default values, after copying crds/xbackends.yaml into the chart.
#   hack/render-manifests.sh          write both
#   hack/render-manifests.sh --check  write nothing; exit 1 and show the diff
#                                     when either is stale
# Uses target/tools/helm (hack/install-helm.sh builds it) unless HELM is set.
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=deploy/helm/xbackend-controller
NAMESPACE=xbackend-system
RELEASE=xbackend-controller
CRD_SRC=crds/xbackends.yaml
CRD_COPY=$CHART/files/xbackends.yaml
MANIFEST=deploy/manifests/install.yaml

check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if [[ -z "${HELM:-}" ]]; then
  hack/install-helm.sh
  HELM=$PWD/target/tools/helm
fi
# Keep Helm's caches and config out of $HOME: nothing here needs repositories.
export HELM_CACHE_HOME="${HELM_CACHE_HOME:-$PWD/target/tools/helm-home/cache}"
export HELM_CONFIG_HOME="${HELM_CONFIG_HOME:-$PWD/target/tools/helm-home/config}"
export HELM_DATA_HOME="${HELM_DATA_HOME:-$PWD/target/tools/helm-home/data}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The chart renders from its own copy of the CRD; render from a copy of the
# chart so --check sees what the chart would hold after a refresh.
cp -R "$CHART" "$work/chart"
cp "$CRD_SRC" "$work/chart/files/xbackends.yaml"

{
  cat <<HEADER
# xbackend-controller: the whole install as plain YAML, rendered from
# $CHART with its default values by hack/render-manifests.sh
# (\`make manifests\`). Do not edit: change the chart and re-render.
#   kubectl apply --server-side -f $MANIFEST
---
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    app.kubernetes.io/name: xbackend-controller
    app.kubernetes.io/part-of: xbackend-controller
    # The controller runs as non-root with every restriction the restricted
    # Pod Security Standard asks for.
    pod-security.kubernetes.io/enforce: restricted
HEADER
  "$HELM" template "$RELEASE" "$work/chart" --namespace "$NAMESPACE"
} > "$work/install.yaml"

if $check; then
  stale=0
  if ! cmp -s "$CRD_SRC" "$CRD_COPY"; then
    echo "$CRD_COPY is stale (differs from $CRD_SRC); run make manifests" >&2
    diff -u "$CRD_COPY" "$CRD_SRC" | head -40 >&2 || true
    stale=1
  fi
  if ! cmp -s "$work/install.yaml" "$MANIFEST"; then
    echo "$MANIFEST is stale; run make manifests" >&2
    diff -u "$MANIFEST" "$work/install.yaml" | head -80 >&2 || true
    stale=1
  fi
  exit $stale
fi

mkdir -p "$(dirname "$MANIFEST")"
cp "$CRD_SRC" "$CRD_COPY"
cp "$work/install.yaml" "$MANIFEST"
echo "wrote $CRD_COPY and $MANIFEST"
