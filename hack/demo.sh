#!/usr/bin/env bash
# `make demo`: a local control plane with crds/ and examples/ applied, the
# controller running against it, and the resulting XBackend status.
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
"$controlplane" --dir "$state/cluster" >"$state/kubeconfig.line" 2>"$state/controlplane.log" &
pids+=($!)
for _ in $(seq 600); do
  grep -q '^KUBECONFIG=' "$state/kubeconfig.line" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "control plane failed; see $state/controlplane.log"; tail -20 "$state/controlplane.log"; exit 1; }
  sleep 0.2
done
export "$(cat "$state/kubeconfig.line")"
echo "  KUBECONFIG=$KUBECONFIG"

echo "Applying crds/ and examples/..."
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for condition=Established crd/xbackends.gateway.networking.x-k8s.io >/dev/null
kubectl apply --server-side -f examples/ >/dev/null

echo "Starting the controller (logs: $state/controller.log)..."
"$controller" run --no-leader-election --metrics-addr 127.0.0.1:0 >"$state/controller.log" 2>&1 &
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
  [ "$missing" = 0 ] && break
  kill -0 "${pids[1]}" 2>/dev/null || { echo "controller exited; see $state/controller.log"; tail -20 "$state/controller.log"; exit 1; }
  sleep 0.2
done

echo
kubectl get xbackends -A
echo
kubectl get xbackend instance-metadata -o jsonpath='{range .status.ancestors[*].conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
echo
echo "Running. In another shell:  export KUBECONFIG=$KUBECONFIG; kubectl get xbackends -A -w"
echo "Press Ctrl-C to stop."
wait
