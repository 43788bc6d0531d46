#!/usr/bin/env bash
# Builds a real kube-apiserver, kube-controller-manager and kubectl (v1.20.2) from Debian's source
# package, and installs etcd, for the integration tests. No registry ships these binaries
# and nothing may be downloaded at test time, so this is the offline way (see
# ../shared/ENVIRONMENT.md). The binaries are cached in $WEFT_CACHE: a second run costs nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

want=(kube-apiserver kube-controller-manager kubectl)
have_all() { for b in "${want[@]}"; do [ -x "$KUBE_BIN_DIR/$b" ] || return 1; done; }

apt_install etcd-server
if have_all; then
  log "test API server already built in $KUBE_BIN_DIR"
  exit 0
fi

# deb-src for the same mirror and suites as the binary sources.
src_list=/etc/apt/sources.list.d/weft-deb-src.sources
if [ ! -f "$src_list" ]; then
  log "adding deb-src entries ($src_list)"
  sed -e "s/^Types: deb$/Types: deb-src/" /etc/apt/sources.list.d/debian.sources | as_root tee "$src_list" >/dev/null
  WEFT_APT_UPDATED=
fi
apt_install dpkg-dev golang-go rsync golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
# A new deb-src list needs an update even when every binary package was present.
if ! apt-cache showsrc kubernetes >/dev/null 2>&1 || [ -z "$(apt-cache showsrc kubernetes 2>/dev/null)" ]; then
  as_root apt-get update -qq
fi

build_root="$WEFT_CACHE/kube-src"
rm -rf "$build_root"
mkdir -p "$build_root"
cd "$build_root"
log "apt-get source kubernetes"
apt-get source -qq kubernetes >/dev/null 2>&1 || apt-get source kubernetes
src=$(find "$build_root" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n 1)
[ -n "$src" ] || { echo "apt-get source kubernetes produced no tree" >&2; exit 1; }
cd "$src"

# The vendored reflect2 1.0.1 crashes under Go >= 1.18 as soon as a CRD is created;
# Debian's packaged reflect2 1.0.2 and json-iterator 1.1.12 work.
for pair in "modern-go/reflect2" "json-iterator/go"; do
  rm -rf "vendor/github.com/$pair"
  mkdir -p "vendor/github.com/$pair"
  rsync -a --exclude '*_test.go' --exclude 'test*/' "/usr/share/gocode/src/github.com/$pair/" "vendor/github.com/$pair/"
done

mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
missing=()
for b in "${want[@]}"; do [ -x "$KUBE_BIN_DIR/$b" ] || missing+=("$b"); done
for b in "${missing[@]}"; do
  log "building $b (several CPU-minutes)"
  GOPATH="$PWD/.go" CGO_ENABLED=0 GOPROXY=off \
    KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
    make WHAT="cmd/$b" >"$build_root/build-$b.log" 2>&1 || {
      tail -n 40 "$build_root/build-$b.log" >&2
      exit 1
    }
done
mkdir -p "$KUBE_BIN_DIR"
for b in "${missing[@]}"; do
  install -m 0755 "_output/bin/$b" "$KUBE_BIN_DIR/$b"
done
cd /
rm -rf "$build_root"
log "installed ${missing[*]} in $KUBE_BIN_DIR"
