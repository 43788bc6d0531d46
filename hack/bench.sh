#!/usr/bin/env bash
# End-to-end benchmark of local mode (read, parse, join, write outputs) on generated
# credit-card traffic, in a release build. Prints one line per size with the median of
# several runs; docs/benchmarks.md records the results with this exact command.
#
#   bash hack/bench.sh [ACTIONS...]      default: 100000 500000
#   RUNS=5 bash hack/bench.sh 500000
#   LOCAL_ARGS="--max-hot-mib 0" bash hack/bench.sh   # state through RocksDB, no hot tier
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
cd "$here/.."

bash hack/install-build-deps.sh
source "$here/lib.sh" # again: ccache may have just been installed
runs=${RUNS:-3}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 500000)

log "building release"
cargo build -q --release --locked -p weft-worker --target-dir "$WEFT_RELEASE_TARGET_DIR"
bin="$WEFT_RELEASE_TARGET_DIR/release/weft-worker"
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
example=manifests/examples/credit-card

printf '%-10s %-10s %-14s %-12s %-12s %-12s %-10s\n' actions lines "events/s(med)" "seconds" "peakRSS_MiB" "sst_MiB" "hot_only"
for n in "${sizes[@]}"; do
  "$bin" generate --actions "$n" --seed 1 -o "$work/in-$n.jsonl" >/dev/null
  results=()
  for r in $(seq "$runs"); do
    rm -rf "$work/out"
    # GNU time reports the peak RSS of the run (KiB).
    /usr/bin/time -f '%M' -o "$work/rss" "$bin" local -f "$example/processdefinition.yaml" -f "$example/joinpipeline.yaml" \
      --input "$work/in-$n.jsonl" --output "$work/out" --quiet ${LOCAL_ARGS:-} >"$work/summary.json" 2>"$work/stderr"
    results+=("$(python3 - "$work/summary.json" "$work/rss" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
rss_kib = int(open(sys.argv[2]).read().split()[-1])
print(f'{s["eventsPerSecond"]:.0f} {s["events"]} {s["seconds"]:.3f} {rss_kib/1024:.1f} {s["state"]["sstBytes"]/2**20:.1f} {s["state"]["neverPersistedShare"]:.4f}')
PY
)")
  done
  printf '%s\n' "${results[@]}" | sort -n | awk -v n="$n" -v runs="$runs" '
    { line[NR] = $0 }
    END { split(line[int((NR + 1) / 2)], m, " ");
          printf "%-10s %-10s %-14s %-12s %-12s %-12s %-10s\n", n, m[2], m[1], m[3], m[4], m[5], m[6] }'
done
