#!/usr/bin/env bash
# Installs what building the workspace needs: libclang for librocksdb-sys' bindgen,
# mold for fast links. The Rust toolchain and a C/C++ compiler are on the machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
apt_install libclang-dev mold clang make pkg-config
