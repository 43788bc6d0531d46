#!/usr/bin/env bash
# The main job on the embedded default: local mode (no Kubernetes, no Kafka) runs the
# credit-card example pipeline over generated traffic and writes joined actions, incomplete
# actions, dead letters and a summary to ./weft-demo (or $1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
cd "$here/.."
out=${1:-weft-demo}
actions=${ACTIONS:-100000}

bash hack/install-build-deps.sh
source "$here/lib.sh" # again: ccache may have just been installed
log "building weft-worker (release; the first build compiles RocksDB and takes a while)"
release_build
bin="$WEFT_RELEASE_TARGET_DIR/release/weft-worker"
log "validating the example resources"
"$bin" validate -f manifests/examples/credit-card
log "local mode: $actions generated credit-card actions"
"$bin" local -f manifests/examples/credit-card/processdefinition.yaml -f manifests/examples/credit-card/joinpipeline.yaml \
  --generate "$actions" --output "$out" --fresh
log "outputs: $out/actions.jsonl, incomplete.jsonl, dead-letters.jsonl, metrics.jsonl, alerts.jsonl, metrics.prom, summary.json"
head -n 1 "$out/actions.jsonl"
head -n 1 "$out/metrics.jsonl"
