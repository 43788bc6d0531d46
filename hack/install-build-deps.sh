#!/usr/bin/env bash
# Installs what building the workspace needs beyond the Rust toolchain and gcc: libclang for
# librocksdb-sys' bindgen, ccache for RocksDB's C++ objects, openssl for the test harness's
# service-account keys.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
apt_install libclang-dev clang make pkg-config openssl libssl-dev zlib1g-dev ccache
command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first" >&2; exit 1; }
