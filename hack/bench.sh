#!/usr/bin/env bash
# Benchmarks in a release build, on generated credit-card traffic. For each size, local mode:
# the join alone (read, parse, join, write outputs; `--join-only`), the join and the process
# stage together, and the process stage alone (the `process_stage` bench binary over the
# actions the join wrote); then one worker over librdkafka's mock Kafka cluster (the
# `kafka_worker` bench binary): shuffle + join, and shuffle + join + process. Prints medians of several runs; docs/benchmarks.md records the
# results with this exact command.
#
#   bash hack/bench.sh [ACTIONS...]      default: 100000 500000
#   RUNS=5 bash hack/bench.sh 500000
#   LOCAL_ARGS="--max-hot-mib 0" bash hack/bench.sh   # join state through RocksDB, no hot tier
#   STAGES=join bash hack/bench.sh 2000000 5000000      # some rows only (join join+process
#                                                       # process-alone kafka-join kafka-all)
#
# Local rows also give the peak of the state's files on disk (`disk_MiB`: write-ahead log
# and SST files, seen at each checkpoint), the share of actions whose state never touched
# RocksDB (`hot_only`), the run's CPU time (user + system, every thread), the input events
# per CPU second (the per-core rate) and the system part of the CPU time (this VM's kernel
# sometimes takes ~0.7 s more for the same run: page faults, writeback).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
cd "$here/.."

bash hack/install-build-deps.sh
source "$here/lib.sh" # again: ccache may have just been installed
runs=${RUNS:-3}
stages_wanted=" ${STAGES:-join join+process process-alone kafka-join kafka-all} "
wanted() { [[ "$stages_wanted" == *" $1 "* ]]; }
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 500000)

log "building release"
release_build --bins --benches
bin="$WEFT_RELEASE_TARGET_DIR/release/weft-worker"
process_bench=$(ls -t "$WEFT_RELEASE_TARGET_DIR"/release/deps/process_stage-* | grep -v '\.d$' | head -1)
kafka_bench=$(ls -t "$WEFT_RELEASE_TARGET_DIR"/release/deps/kafka_worker-* | grep -v '\.d$' | head -1)
# The bench binaries find manifests/ as under `cargo bench` (the build cache is shared
# between checkouts: the compiled-in path may be another one's).
export CARGO_MANIFEST_DIR="$PWD/worker"
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
example=manifests/examples/credit-card

# One local run; prints: events/s events seconds peakRSS_MiB peak_state_on_disk_MiB hot_only_share cpu_s
# events_per_cpu_s
local_run() {
  local input=$1 out=$2
  shift 2
  rm -rf "$out"
  # The previous run's output (~1 GB at 500k actions) is still being written back to disk;
  # on two cores that writeback took up to a third of the next run's time.
  sync
  # This VM's kernel pages out file pages idle for a minute (DAMON reclaim, up to 128 MiB/s):
  # between runs it dropped up to a third of the 5M input, which the next run then read from
  # disk (3.8 s of system time instead of 1.3). Read just before, the input is cached.
  cat "$input" >/dev/null
  # GNU time reports the peak RSS of the run (KiB).
  /usr/bin/time -f '%M %U %S' -o "$work/rss" "$bin" local -f "$example/processdefinition.yaml" -f "$example/joinpipeline.yaml" \
    --input "$input" --output "$out" --quiet "$@" ${LOCAL_ARGS:-} >"$work/summary.json" 2>"$work/stderr"
  python3 - "$work/summary.json" "$work/rss" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
rss_kib, user, system = open(sys.argv[2]).read().split()[-3:]
cpu = float(user) + float(system)
print(f'{s["eventsPerSecond"]:.0f} {s["events"]} {s["seconds"]:.3f} {int(rss_kib)/1024:.1f} {s["state"].get("peakDiskBytes", 0)/2**20:.1f} {s["state"]["neverPersistedShare"]:.4f} {cpu:.2f} {s["events"]/max(cpu, 1e-9):.0f} {float(system):.2f}')
PY
}

median() { sort -n | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'; }

printf '%-10s %-14s %-10s %-16s %-10s %-12s %-10s %-10s %-8s %-10s %-6s\n' actions stages lines "per_second(med)" seconds peakRSS_MiB disk_MiB hot_only cpu_s per_cpu_s sys_s
for n in "${sizes[@]}"; do
  "$bin" generate --actions "$n" --seed 1 -o "$work/in-$n.jsonl" >/dev/null
  # A file just written stays in the page cache as the write path left it, and reading it
  # cost the kernel ~4x the system time of the same file once read back from disk (5.0 s
  # against 1.3 s at 5M actions; docs/benchmarks.md). Dropped from the cache and read back,
  # the input is cached as any file written earlier is.
  sync "$work/in-$n.jsonl"
  dd if="$work/in-$n.jsonl" iflag=nocache count=0 status=none
  cat "$work/in-$n.jsonl" >/dev/null
  for stages in join join+process; do
    wanted "$stages" || continue
    flags=()
    [ "$stages" = join ] && flags=(--join-only)
    results=()
    for _ in $(seq "$runs"); do
      results+=("$(local_run "$work/in-$n.jsonl" "$work/out-$stages" "${flags[@]}")")
    done
    read -r rate events seconds rss disk hot cpu per_cpu sys < <(printf '%s\n' "${results[@]}" | median)
    printf '%-10s %-14s %-10s %-16s %-10s %-12s %-10s %-10s %-8s %-10s %-6s\n' "$n" "$stages" "$events" "$rate" "$seconds" "$rss" "$disk" "$hot" "$cpu" "$per_cpu" "$sys"
  done
  # The process stage alone, over the actions the join-only run wrote (actions per second).
  if wanted process-alone && wanted join; then
    sync
    line=$("$process_bench" "$work/out-join" "$runs" 2>/dev/null)
    rate=$(echo "$line" | sed -E 's/.*median ([0-9]+) actions.*/\1/')
    actions=$(echo "$line" | sed -E 's/.*stage: ([0-9]+) actions.*/\1/')
    printf '%-10s %-14s %-10s %-16s\n' "$n" "process-alone" "$actions" "$rate"
  fi
  # One worker over the mock Kafka cluster (`kafka_worker` bench binary): input events/s.
  for stages in kafka-join kafka-all; do
    wanted "$stages" || continue
    flags=()
    [ "$stages" = kafka-join ] && flags=(--join-only)
    sync
    line=$("$kafka_bench" "$n" "$runs" "${flags[@]}" 2>/dev/null)
    rate=$(echo "$line" | sed -E 's/.*median ([0-9]+) events.*/\1/')
    lines=$(echo "$line" | sed -E 's/.*actions, ([0-9]+) lines.*/\1/')
    # CPU: the whole process's, the in-process mock cluster's threads included.
    per_cpu=$(echo "$line" | sed -E 's/.*\(([0-9]+) per CPU second\).*/\1/')
    printf '%-10s %-14s %-10s %-16s %-10s %-12s %-10s %-10s %-8s %-10s\n' "$n" "$stages" "$lines" "$rate" "" "" "" "" "" "$per_cpu"
  done
done
