#!/usr/bin/env bash
# Proves the README's promise: on a fresh Debian 12 machine that has only Rust, the set-up and
# build steps of `scripts/test.sh` and `scripts/bench.sh` work. Builds a minimal Debian 12 root
# with debootstrap, bind-mounts this machine's Rust toolchain read-only, copies in the files git
# tracks (committed or not), and runs inside it: `scripts/setup.sh`, then `cargo build --locked`
# of every crate and target, release binaries as bench.sh builds them. The tests themselves run on
# the host (.ci/run). Slow (a debootstrap and two full builds): CI runs it when CI_FRESH=1.
#
#   bash scripts/fresh-machine-check.sh [--keep]       (root; FRESH_ROOT, FRESH_MIRROR override)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
keep=0
[[ ${1:-} == --keep ]] && keep=1
[[ $(id -u) -eq 0 ]] || { echo "fresh-machine-check: run as root (debootstrap, chroot, mounts)" >&2; exit 1; }

root=${FRESH_ROOT:-/var/tmp/teleport-fresh-root}
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}
# The toolchain itself (rust-toolchain.toml's), not rustup's proxies: rustup wants to write to
# its home, which is mounted read-only.
toolchain=$(dirname "$(dirname "$(rustup which cargo 2>/dev/null || command -v cargo)")")
[[ -x $toolchain/bin/cargo && -x $toolchain/bin/rustc ]] || { echo "fresh-machine-check: no Rust toolchain at $toolchain" >&2; exit 1; }

if ! command -v debootstrap >/dev/null; then
  echo "fresh-machine-check: installing debootstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  if ((keep)); then echo "fresh-machine-check: kept $root" >&2; else rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT
mnt() { # mnt TARGET ARGS...: mount, remembered for cleanup
  local target=$1; shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}

if [[ -e $root ]]; then
  grep -q " $root/" /proc/mounts && { echo "fresh-machine-check: $root has mounts; unmount them first" >&2; exit 1; }
  rm -rf --one-file-system "$root"
fi
start=$(date +%s)
echo "fresh-machine-check: debootstrap bookworm (minbase) into $root" >&2
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
  { tail -20 "$root.debootstrap.log" >&2; exit 1; }
rm -f "$root.debootstrap.log"
echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The site's trust store, as any machine here has it (it may hold an egress proxy's CA): minbase
# has no ca-certificates, and a machine that installed Rust with rustup does.
if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then # kept if a package runs update-ca-certificates
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
# No service starts inside a chroot (containerd's package would try).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

mnt "$root/proc" -t proc proc
mnt "$root/sys" -t sysfs sys
mnt "$root/dev" --rbind /dev
mount --make-rslave "$root/dev"
mnt "$root/opt/rust" --bind "$toolchain"
mount -o remount,bind,ro "$root/opt/rust"

# The project as git sees it (tracked and untracked-not-ignored files), without build output.
mkdir -p "$root/src/teleport-testbed"
git ls-files -z --cached --others --exclude-standard |
  xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' |
  tar --null -T - -cf - | tar -xf - -C "$root/src/teleport-testbed"

echo "fresh-machine-check: inside the fresh root: setup + build" >&2
chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
  PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  CARGO_HOME=/root/.cargo CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0 \
  /bin/bash -euo pipefail -c '
    cd /src/teleport-testbed
    echo "== packages before: $(dpkg-query -W -f=. | wc -c) installed; protoc: $(command -v protoc || echo none)"
    rustc --version && cargo --version
    bash scripts/setup.sh
    echo "== protoc after setup: $(command -v protoc || echo none); libprotobuf-dev: $(dpkg-query -W -f="\${Status}" libprotobuf-dev 2>/dev/null || echo absent)"
    build() { # build ARGS...: cargo build, its last lines shown, the whole log on failure
      if cargo build --locked "$@" >/tmp/build.log 2>&1; then grep -E "^warning|Finished" /tmp/build.log
      else cat /tmp/build.log; echo "== cargo build $* FAILED"; return 1; fi
    }
    build --workspace --all-targets
    build --release -p testbed -p fuse-mount -p registry-mock -p fixtures
    for b in testbed teleportd registry-mock fixtures; do target/release/$b --help >/dev/null; echo "== $b: built and runs"; done
  '
echo "fresh-machine-check: OK in $(( $(date +%s) - start )) s" >&2
