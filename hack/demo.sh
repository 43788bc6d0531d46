#!/usr/bin/env bash
# The main job on the embedded default. Local mode (generated events in, joined actions and
# process metrics out) arrives with the join engine; until then this builds Weft, checks the
# CRDs against the Rust types and validates the example resources exactly as the operator and
# the worker will.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
cd "$here/.."

bash hack/install-build-deps.sh
log "building"
cargo build -q --locked -p weft-crds -p weft-worker
log "CRDs in manifests/crds match the Rust types"
"$CARGO_TARGET_DIR/debug/crdgen" --check
log "validating manifests/examples"
"$CARGO_TARGET_DIR/debug/weft-worker" validate -f manifests/examples
log "local mode is not built yet: see README.md"
