# Shared settings for the hack/ scripts. Sourced, not run.
# Everything expensive lives outside the clone, so a fresh clone on the same machine reuses it.
if [ -z "${WEFT_CACHE:-}" ]; then
  if mkdir -p /var/cache/weft 2>/dev/null && [ -w /var/cache/weft ]; then
    WEFT_CACHE=/var/cache/weft
  else
    WEFT_CACHE="$HOME/.cache/weft"
  fi
fi
: "${CARGO_TARGET_DIR:=$WEFT_CACHE/target}"
# Release builds (demo, benchmarks) get their own directory: cargo locks a target directory
# per build, and a long release build must not block the tests. On x86-64 they use the CPU's
# CRC32C instructions: RocksDB compiles its SSE4.2 checksums only when Rust's target features
# say so, and without them every WAL write and block read checksums in software (join +
# process at 500k actions: 3 pairs +4-10%; the join at 2M: 2 pairs +7-20%). Every x86-64
# server CPU since 2010 has them. The directory is named for the flags, which change every
# artifact.
if [ "$(uname -m)" = x86_64 ]; then
  WEFT_RELEASE_RUSTFLAGS="${WEFT_RELEASE_RUSTFLAGS--C target-feature=+sse4.2,+pclmulqdq,+popcnt}"
  WEFT_RELEASE_TARGET_DIR="${WEFT_RELEASE_TARGET_DIR:-$WEFT_CACHE/target-sse42}"
else
  WEFT_RELEASE_RUSTFLAGS="${WEFT_RELEASE_RUSTFLAGS-}"
  WEFT_RELEASE_TARGET_DIR="${WEFT_RELEASE_TARGET_DIR:-$WEFT_CACHE/target-release}"
fi
export WEFT_CACHE CARGO_TARGET_DIR
KUBE_BIN_DIR="$WEFT_CACHE/kube-1.20.2/bin"
# ccache in masquerade mode caches RocksDB's C++ objects: the second build of them (clippy's
# check build, which reruns librocksdb-sys' build script) takes a minute instead of fifteen.
if [ -d /usr/lib/ccache ]; then
  export PATH="/usr/lib/ccache:$PATH" CCACHE_DIR="$WEFT_CACHE/ccache" CCACHE_MAXSIZE=5G
fi
export KUBE_BIN_DIR

log() { printf '==> %s\n' "$*" >&2; }

# A release build of weft-worker (extra cargo arguments: `--bins --benches`), with the
# release flags and directory above.
release_build() {
  RUSTFLAGS="${RUSTFLAGS:-} $WEFT_RELEASE_RUSTFLAGS" cargo build -q --release --locked -p weft-worker \
    --target-dir "$WEFT_RELEASE_TARGET_DIR" "$@"
}

# Runs apt-get as root directly, or through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs the Debian packages that are missing; apt-get update at most once per script run.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  if [ -z "${WEFT_APT_UPDATED:-}" ]; then
    as_root apt-get update -qq
    WEFT_APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
