#!/usr/bin/env bash
# Installs the system packages the testbed and its tests need, only those missing.
# Runs as root on Debian/Ubuntu (apt); elsewhere it names what is missing and stops.
set -euo pipefail

# command-or-file → Debian package
need=(
  "containerd:containerd"
  "runc:runc"
  "ctr:containerd"
  "skopeo:skopeo"
  "fusermount3:fuse3"
  "protoc:protobuf-compiler"
  "curl:curl"
  "/bin/busybox:busybox-static"
  "gcc:gcc"
)

missing=()
for pair in "${need[@]}"; do
  what=${pair%%:*} pkg=${pair##*:}
  if [[ $what == /* ]]; then [[ -e $what ]] && continue
  else command -v "$what" >/dev/null 2>&1 && continue; fi
  [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing packages: ${missing[*]}" >&2
    echo "setup: install them as root, e.g.: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

[[ -e /dev/fuse ]] || { modprobe fuse 2>/dev/null || true; }
[[ -e /dev/fuse ]] || { echo "setup: /dev/fuse is missing (load the fuse module)" >&2; exit 1; }
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || { echo "setup: overlayfs is not available in this kernel" >&2; exit 1; }
