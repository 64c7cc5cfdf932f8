#!/usr/bin/env bash
# `make bench` / `make bench N=1000`: the scale benchmark (benches/scale.rs)
# against a fresh local control plane. Prints a table and ends with one line
#   bench: n=<N> ratio=<x.xx> cold_writes=<n> idle_writes=<n> restart_writes=<n> reaction_writes=<n> rss_mib=<n> rss_secrets_delta_mib=<n> p50_react_ms=<x> p99_react_ms=<x> floor_patch_ms=<x> ctrl_cpu_s=<x>
# rss_mib is the peak VmHWM over every controller process of the run; the
# react/floor fields come from the latency phase, ctrl_cpu_s from the cold phase.
# BENCH_HEAPTRACK=1 records the cold-start process with heaptrack
# (hack/heap-profile.sh prints the heap by owner); BENCH_PERF=1 records perf.
# The full output is also kept in target/bench/scale-<N>.txt.
# BENCH_FSYNC=1 runs etcd with fsync (default: --unsafe-no-fsync, as the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-10000}"
out=target/bench
mkdir -p "$out"
# The benchmark runs the release controller (target/release/xbackend-controller,
# which `cargo bench` builds with the bench target) and the control plane
# binary that `make controlplane` built.
set +e
N="$N" cargo bench --locked --bench scale 2> >(tee "$out/scale-$N.log" >&2) | tee "$out/scale-$N.txt"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "benchmark failed (exit $status); full log: $out/scale-$N.log" >&2
  exit "$status"
fi
