#!/usr/bin/env bash
# Fetches another containerd release line from Debian's archive into a project-local folder,
# without touching the system's apt sources or lists:
#   scripts/get-containerd.sh 1.7   # Debian trixie's containerd 1.7 → out/containerd-1.7/
#   scripts/get-containerd.sh 2.1   # Debian sid's containerd 2.x   → out/containerd-2.1/
# Leaves DIR with `containerd`, `containerd-shim-runc-v2` and `ctr`, and prints DIR. Their runc
# is not taken (it needs a newer glibc): the node config points the runtime at the system runc.
# Use DIR with `testbed compare --containerd-bin DIR` or `TB_CONTAINERD_BIN=DIR cargo test ...`.
set -euo pipefail

line=${1:-}
case "$line" in
  1.7) suite=trixie ;;
  2.1|2) line=2.1 suite=sid ;;
  *) echo "usage: $0 1.7|2.1 [OUT_DIR]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
out=${2:-$root/out/containerd-$line}

if [[ -x $out/containerd && -x $out/containerd-shim-runc-v2 && -x $out/ctr ]]; then
  echo "$out"; exit 0
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
  echo "get-containerd: needs apt-get and dpkg (Debian/Ubuntu)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb" "$tmp/x"

# The archive key that signs trixie and sid; Debian 12's debian-archive-keyring carries it,
# Ubuntu's debian-archive-keyring package too.
keyring=""
for k in /usr/share/keyrings/debian-archive-keyring.gpg /usr/share/keyrings/debian-archive-trixie-automatic.gpg; do
  [[ -r $k ]] && { keyring=$k; break; }
done
[[ -n $keyring ]] || { echo "get-containerd: no Debian archive keyring (apt-get install debian-archive-keyring)" >&2; exit 1; }
arch=$(dpkg --print-architecture)
echo "deb [arch=$arch signed-by=$keyring] http://deb.debian.org/debian $suite main" >"$tmp/sources.list"

apt_opts=(
  -o "Dir::Etc::SourceList=$tmp/sources.list"
  -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$tmp/lists"
  -o "Dir::Cache=$tmp/cache"
  -o "Dir::State::Status=/dev/null"
  -o "APT::Architecture=$arch"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" -qq update
(cd "$tmp/deb" && apt-get "${apt_opts[@]}" -qq download containerd)
dpkg -x "$tmp"/deb/containerd_*.deb "$tmp/x"

mkdir -p "$out"
for b in containerd containerd-shim-runc-v2 ctr; do
  install -m 0755 "$tmp/x/usr/bin/$b" "$out/$b"
done
ls "$tmp"/deb/containerd_*.deb | sed 's|.*/||' >"$out/SOURCE"
echo "get-containerd: $("$out/containerd" --version)" >&2
echo "$out"
