#!/usr/bin/env bash
# `make demo`: a local control plane with crds/ and examples/ applied, the
# controller running against it, and the resulting XBackend status.
# GATEWAY_API=v1.7.0 installs upstream Gateway API v1.7.0's experimental CRDs
# (its XBackend CRD instead of crds/) to show the controller on a v1.7 cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

controlplane=target/controlplane/controlplane
controller=target/debug/xbackend-controller
state=target/demo
rm -rf "$state"
mkdir -p "$state"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "Starting the local control plane (etcd + kube-apiserver on 127.0.0.1)..."
gateway_api=${GATEWAY_API:-}
cluster_flags=()
if [[ -n "$gateway_api" ]]; then
  cluster_flags=(--gateway-api-channel experimental --gateway-api-version "$gateway_api")
fi
"$controlplane" --dir "$state/cluster" "${cluster_flags[@]}" >"$state/kubeconfig.line" 2>"$state/controlplane.log" &
pids+=($!)
for _ in $(seq 600); do
  grep -q '^KUBECONFIG=' "$state/kubeconfig.line" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "control plane failed; see $state/controlplane.log"; tail -20 "$state/controlplane.log"; exit 1; }
  sleep 0.2
done
export "$(cat "$state/kubeconfig.line")"
echo "  KUBECONFIG=$KUBECONFIG"

if [[ -z "$gateway_api" ]]; then
  echo "Applying crds/ and examples/..."
  kubectl apply --server-side -f crds/ >/dev/null
  kubectl wait --for condition=Established crd/xbackends.gateway.networking.x-k8s.io >/dev/null
else
  echo "Applying examples/ on Gateway API $gateway_api's own XBackend CRD..."
fi
# One file at a time: an upstream CRD may refuse an example written for another
# release (v1.7.0 has no port.port), and the rest should still run.
for example in examples/*.yaml; do
  if ! out=$(kubectl apply --server-side -f "$example" 2>&1 >/dev/null); then
    echo "  skipped $example: ${out//$'\n'/ }"
  fi
done

echo "Starting the controller (logs: $state/controller.log)..."
# --no-dns-check: the demo runs offline and asks no DNS server; drop it to see
# the resolved-address guardrail against this machine's resolver.
"$controller" run --no-leader-election --no-dns-check --metrics-addr 127.0.0.1:0 >"$state/controller.log" 2>&1 &
pids+=($!)

# Wait until every XBackend has an Accepted condition from us.
for _ in $(seq 300); do
  missing=$(kubectl get xbackends -A -o json | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
print(sum(1 for x in items if not any(
    c.get("type") == "Accepted"
    for a in (x.get("status") or {}).get("ancestors") or []
    for c in a.get("conditions") or [])))')
  # ...and our GatewayClass is Accepted (the class writer runs beside the reconciles).
  accepted=$(kubectl get gatewayclass -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Accepted")].status}{"\n"}{end}' | grep -c True || true)
  [ "$missing" = 0 ] && [ "$accepted" -ge 1 ] && break
  kill -0 "${pids[1]}" 2>/dev/null || { echo "controller exited; see $state/controller.log"; tail -20 "$state/controller.log"; exit 1; }
  sleep 0.2
done

echo
kubectl get gatewayclass
echo
kubectl get xbackends -A
if [[ -n "$gateway_api" ]]; then
  # Upstream's CRD prints only Age: show the verdicts explicitly.
  echo
  kubectl get xbackends -A -o custom-columns='NAMESPACE:.metadata.namespace,NAME:.metadata.name,ACCEPTED:.status.ancestors[*].conditions[?(@.type=="Accepted")].reason,RESOLVEDREFS:.status.ancestors[*].conditions[?(@.type=="ResolvedRefs")].reason'
fi
echo
kubectl get xbackend instance-metadata -o jsonpath='{range .status.ancestors[*].conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
echo
echo "Running. In another shell:  export KUBECONFIG=$KUBECONFIG; kubectl get xbackends -A -w"
echo "Press Ctrl-C to stop."
wait
