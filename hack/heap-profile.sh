#!/usr/bin/env bash
# Heap profile by owner of a benchmark's cold-start process.
#   BENCH_HEAPTRACK=1 make bench      # writes target/bench/heaptrack-cold.raw
#   hack/heap-profile.sh              # prints the peak heap by owner
# Needs heaptrack (Debian: heaptrack) and python3. An owner is the innermost
# frame of this crate on the allocating stack (else the innermost runtime
# frame): the code that decided to keep the memory.
set -euo pipefail
cd "$(dirname "$0")/.."
raw=target/bench/heaptrack-cold.raw
interpret=/usr/lib/heaptrack/libexec/heaptrack_interpret
[ -f "$raw" ] || { echo "no $raw: run BENCH_HEAPTRACK=1 make bench first" >&2; exit 1; }
"$interpret" < "$raw" | zstd -q -f -o target/bench/heaptrack-cold.zst
heaptrack_print -f target/bench/heaptrack-cold.zst --print-flamegraph target/bench/heap-peak.folded \
  --flamegraph-cost-type peak > target/bench/heap-summary.txt 2>/dev/null
grep -E "peak heap memory|peak RSS" target/bench/heap-summary.txt
python3 - target/bench/heap-peak.folded <<'PY'
import collections, re, sys
owners, total = collections.Counter(), 0
runtime = ("kube", "hyper", "hickory", "tokio", "serde", "rustls", "h2", "tower")
for line in open(sys.argv[1]):
    stack, _, cost = line.rstrip().rpartition(" ")
    frames, cost = stack.split(";"), int(cost)
    total += cost
    ours = [f for f in frames if "xbackend_controller" in f]
    owner = ours[-1] if ours else next((f for f in reversed(frames) if any(k in f for k in runtime)), "other")
    owners[re.sub(r"::h[0-9a-f]{16}$", "", owner)[:110]] += cost
print(f"{'MiB':>8}  owner (at the peak; total {total / 2**20:.1f} MiB)")
for owner, cost in owners.most_common(15):
    print(f"{cost / 2**20:8.2f}  {owner}")
PY
