#!/usr/bin/env bash
# get-peers.sh: fetch the peer snapshotters the bed compares against into out/peers/<name>/,
# without touching the system's apt configuration (own sources list, lists and cache dirs).
#   scripts/get-peers.sh soci      # Debian sid's soci-snapshotter → out/peers/soci/
#   scripts/get-peers.sh nydus     # sid's nydus-snapshotter + nydusd, nydus-image, nydusctl
#                                  # (`cargo install --locked nydus-rs 2.2.0`) → out/peers/nydus/
# nydus's daemon and image builder are not packaged by Debian: they are built from crates.io
# (needs cmake, installed with apt-get only when missing, as setup.sh does; CARGO_TARGET_DIR
# defaults to target-nydus-install/ in the workspace, ignored by git). Without --locked the
# newest dependencies no longer compile.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/out/peers"

# Debian packages per peer (suite sid: the only suite that carries them).
declare -A PKGS=([soci]="soci-snapshotter" [nydus]="nydus-snapshotter")
# The binaries each peer must provide, checked after unpacking.
declare -A BINS=([soci]="usr/bin/soci usr/bin/soci-snapshotter-grpc"
    [nydus]="usr/bin/containerd-nydus-grpc bin/nydusd bin/nydus-image bin/nydusctl")
NYDUS_RS_VERSION=2.2.0

usage() { echo "usage: $0 soci|nydus" >&2; exit 2; }
[ $# -eq 1 ] || usage
peer="$1"
[ -n "${PKGS[$peer]:-}" ] || usage
command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
    { echo "get-peers: needs apt-get and dpkg (Debian/Ubuntu)" >&2; exit 1; }

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "get-peers: $keyring missing (apt-get install debian-archive-keyring)" >&2; exit 1; }

tmp="$(mktemp -d /tmp/get-peers.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/etc/sources.list.d" "$tmp/etc/preferences.d" "$tmp/lists/partial" \
    "$tmp/cache/archives/partial" "$tmp/debs"
cp "$keyring" "$tmp/keyring.gpg"
echo "deb [signed-by=$tmp/keyring.gpg] http://deb.debian.org/debian sid main" >"$tmp/etc/sources.list"

# Everything apt reads or writes points into $tmp; the system's own lists/cache stay as they are.
aptopts=(
    -o "Dir::Etc::SourceList=$tmp/etc/sources.list"
    -o "Dir::Etc::SourceParts=$tmp/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$tmp/etc/preferences"
    -o "Dir::Etc::PreferencesParts=$tmp/etc/preferences.d"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$tmp/cache"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
)
echo "get-peers: apt-get update (sid, private lists in $tmp)"
apt-get "${aptopts[@]}" -q update >"$tmp/update.log" 2>&1 ||
    { cat "$tmp/update.log" >&2; echo "get-peers: apt-get update failed" >&2; exit 1; }
(cd "$tmp/debs" && apt-get "${aptopts[@]}" -q download ${PKGS[$peer]})

rm -rf "${out:?}/$peer"
mkdir -p "$out/$peer"
for deb in "$tmp"/debs/*.deb; do
    echo "get-peers: unpacking $(basename "$deb")"
    dpkg -x "$deb" "$out/$peer"
    dpkg-deb -f "$deb" Package Version >>"$out/$peer/VERSIONS"
done

if [ "$peer" = nydus ]; then
    command -v cmake >/dev/null || {
        [ "$(id -u)" -eq 0 ] || { echo "get-peers: nydus-rs needs cmake (apt-get install cmake)" >&2; exit 1; }
        echo "get-peers: installing cmake (nydus-rs builds a C library with it)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake >/dev/null
    }
    echo "get-peers: cargo install --locked nydus-rs $NYDUS_RS_VERSION (several minutes)"
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-nydus-install}" \
        cargo install --locked --quiet nydus-rs --version "$NYDUS_RS_VERSION" --root "$out/$peer"
    echo "nydus-rs $NYDUS_RS_VERSION (cargo install --locked)" >>"$out/$peer/VERSIONS"
fi

for b in ${BINS[$peer]}; do
    [ -x "$out/$peer/$b" ] || { echo "get-peers: $b missing from the package" >&2; exit 1; }
    if ! ver="$("$out/$peer/$b" --version 2>&1)"; then
        echo "get-peers: $out/$peer/$b does not run here: $ver" >&2
        exit 1
    fi
    echo "get-peers: $b: $ver"
done
echo "get-peers: $peer ready in $out/$peer"
