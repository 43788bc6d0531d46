#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (apt packages, the test
# kube-apiserver), then formatting, lints, the CRD drift check and every test.
# `.ci/run` runs exactly this.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
cd "$here/.."

bash hack/install-build-deps.sh
source "$here/lib.sh" # again: ccache may have just been installed
bash hack/install-test-apiserver.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "crdgen --check (manifests/crds matches the Rust types)"
cargo run -q --locked -p weft-crds --bin crdgen -- --check
log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
else
  cargo test --workspace --locked
fi
