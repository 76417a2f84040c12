#!/usr/bin/env bash
# Builds a real-content image from Debian packages into an OCI layout, layer by layer as a
# Dockerfile would: a Debian 12 (bookworm) minbase root from debootstrap is the base layer; then
# python3 + python3-flask + python3-redis are installed with apt *inside the root* in groups of
# packages (apt's own install order), each group committed as one layer from the file-set diff
# (added/changed paths, whiteouts for removed ones); last an app layer whose command imports
# flask and redis and prints a READY line. About 29 layers in all (REAL_IMAGE_GROUPS + 2).
#
#   bash scripts/build-real-image.sh OUTDIR [--squashed]      (root: debootstrap, chroot)
#   testbed compare --image oci:OUTDIR:v1 --ready log:^READY --variants layered,squashed
#
# --squashed also writes OUTDIR-squashed (tag `squashed`) with `fixtures squash`; testbed
# compare builds the same twin itself for `--variants squashed`. The output is never committed
# (out/ is ignored). Env: REAL_IMAGE_TAG (v1), REAL_IMAGE_GROUPS (27), REAL_IMAGE_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 && $1 != -* ]] || { echo "usage: $0 OUTDIR [--squashed]" >&2; exit 2; }
out=$(realpath -m "$1")
squashed=0
[[ ${2:-} == --squashed ]] && squashed=1
[[ $(id -u) -eq 0 ]] || { echo "build-real-image: run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
for t in debootstrap jq gzip sha256sum tar; do
  command -v "$t" >/dev/null || { echo "build-real-image: needs $t (apt-get install debootstrap jq)" >&2; exit 1; }
done
tag=${REAL_IMAGE_TAG:-v1}
ngroups=${REAL_IMAGE_GROUPS:-27}
mirror=${REAL_IMAGE_MIRROR:-http://deb.debian.org/debian}
packages=(python3 python3-flask python3-redis)

work=$(mktemp -d /var/tmp/real-image.XXXXXX)
root=$work/root
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
say() { echo "build-real-image: $*" >&2; }

say "debootstrap bookworm (minbase) into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }
echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
in_root() { chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
in_root apt-get update -qq
in_root apt-get clean

# Every path with what identifies its content/attributes; a changed line is a changed path.
snapshot() {
  (cd "$root" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run \
    -o -path ./tmp -o -path ./var/cache/apt/archives \) -prune -o \
    -printf '%p\t%y\t%s\t%T@\t%m\t%U:%G\t%l\n') | LC_ALL=C sort >"$1"
}

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
layers_json='[]'; diffs_json='[]'; history_json='[]'
# commit TAR CREATED_BY: gzip it into the layout, record diff_id, digest and history.
commit() {
  local tarf=$1 created_by=$2 diff digest size
  diff=$(sha256sum "$tarf" | cut -d' ' -f1)
  gzip -n -6 <"$tarf" >"$tarf.gz"
  digest=$(sha256sum "$tarf.gz" | cut -d' ' -f1)
  size=$(stat -c %s "$tarf.gz")
  mv "$tarf.gz" "$out/blobs/sha256/$digest"
  rm -f "$tarf"
  layers_json=$(jq -c --arg d "sha256:$digest" --argjson s "$size" \
    '. + [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $d, size: $s}]' <<<"$layers_json")
  diffs_json=$(jq -c --arg d "sha256:$diff" '. + [$d]' <<<"$diffs_json")
  history_json=$(jq -c --arg c "$created_by" '. + [{created: "2026-01-01T00:00:00Z", created_by: $c}]' <<<"$history_json")
  say "layer $(jq length <<<"$layers_json"): $created_by ($size bytes gzip)"
}

# Base layer: the debootstrapped root (no device nodes: runc gives /dev).
snapshot "$work/snap.0"
tar -C "$root" --numeric-owner --xattrs --one-file-system --exclude='./dev/*' \
  --exclude='./proc/*' --exclude='./sys/*' -cf "$work/layer.tar" .
commit "$work/layer.tar" "debootstrap --variant=minbase bookworm"

mkdir -p "$root/proc" "$root/dev"
mount -t proc proc "$root/proc"; mounted+=("$root/proc")
mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"; mounted+=("$root/dev")

# diff_layer PREV CUR: a layer tar of what changed from PREV to CUR.
diff_layer() {
  local prev=$1 cur=$2 tarf=$3 wh=$work/wh
  LC_ALL=C comm -13 "$prev" "$cur" | cut -f1 >"$work/changed"
  LC_ALL=C comm -23 <(cut -f1 "$prev") <(cut -f1 "$cur") >"$work/removed"
  tar -C "$root" --numeric-owner --xattrs --no-recursion -cf "$tarf" -T "$work/changed"
  if [[ -s $work/removed ]]; then
    rm -rf "$wh"; mkdir -p "$wh"; : >"$work/whlist"
    local p parent last=""
    while IFS= read -r p; do
      # Only the top-most removed path needs a whiteout.
      [[ -n $last && $p == "$last"/* ]] && continue
      last=$p
      parent=$(dirname "$p")
      mkdir -p "$wh/$parent"
      : >"$wh/$parent/.wh.$(basename "$p")"
      echo "$parent/.wh.$(basename "$p")" >>"$work/whlist"
    done <"$work/removed"
    tar -C "$wh" --numeric-owner --no-recursion -rf "$tarf" -T "$work/whlist"
  fi
}

mapfile -t order < <(in_root apt-get install -s --no-install-recommends "${packages[@]}" | awk '/^Inst /{print $2}')
((${#order[@]} > 0)) || { say "apt plans nothing to install for ${packages[*]}"; exit 1; }
total=${#order[@]}
((ngroups > total)) && ngroups=$total
say "$total packages in $ngroups groups (one layer each, apt's install order)"
n=0
for ((g = 0; g < ngroups; g++)); do
  # An even split: group g holds packages [g*total/ngroups, (g+1)*total/ngroups).
  from=$((g * total / ngroups)); to=$(((g + 1) * total / ngroups))
  group=("${order[@]:from:to-from}")
  in_root apt-get install -y -qq --no-install-recommends "${group[@]}" >"$work/apt.log" 2>&1 ||
    { tail -20 "$work/apt.log" >&2; exit 1; }
  in_root apt-get clean
  n=$((n + 1))
  snapshot "$work/snap.$n"
  diff_layer "$work/snap.$((n - 1))" "$work/snap.$n" "$work/layer.tar"
  commit "$work/layer.tar" "RUN apt-get install --no-install-recommends ${group[*]}"
done

# The app: imports flask and redis (the real modules, from the layers above) and says READY.
mkdir -p "$root/app"
cat >"$root/app/app.py" <<'EOF'
import time
t0 = time.monotonic()
import flask
import redis
app = flask.Flask(__name__)
print("READY flask=%s redis=%s import_ms=%d" % (flask.__version__ if hasattr(flask, "__version__") else "?",
      redis.__version__, (time.monotonic() - t0) * 1000), flush=True)
EOF
in_root python3 /app/app.py | grep -q '^READY ' || { say "the app does not start in the root"; exit 1; }
find "$root/app" -name __pycache__ -prune -exec rm -rf {} +
n=$((n + 1))
snapshot "$work/snap.$n"
diff_layer "$work/snap.$((n - 1))" "$work/snap.$n" "$work/layer.tar"
commit "$work/layer.tar" "COPY app.py /app/"

config=$(jq -n --argjson diffs "$diffs_json" --argjson hist "$history_json" '{
  created: "2026-01-01T00:00:00Z", architecture: "amd64", os: "linux",
  config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
           Cmd: ["python3", "/app/app.py"], WorkingDir: "/app"},
  rootfs: {type: "layers", diff_ids: $diffs}, history: $hist}')
printf '%s' "$config" >"$work/config.json"
cdig=$(sha256sum "$work/config.json" | cut -d' ' -f1)
csize=$(stat -c %s "$work/config.json")
mv "$work/config.json" "$out/blobs/sha256/$cdig"
jq -nc --arg cd "sha256:$cdig" --argjson cs "$csize" --argjson layers "$layers_json" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
  layers: $layers}' | tr -d '\n' >"$work/manifest.json"
mdig=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
msize=$(stat -c %s "$work/manifest.json")
mv "$work/manifest.json" "$out/blobs/sha256/$mdig"
jq -nc --arg md "sha256:$mdig" --argjson ms "$msize" --arg tag "$tag" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $md, size: $ms,
               annotations: {"org.opencontainers.image.ref.name": $tag}}]}' >"$out/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
say "wrote $out ($(jq length <<<"$layers_json") layers, $(du -sh "$out" | cut -f1)); use --image oci:$out:$tag"

if ((squashed)); then
  cargo run -q -p fixtures -- squash --layout "$out" --tag "$tag" --out "$out-squashed" --out-tag squashed
  say "wrote $out-squashed (1 layer); use --image oci:$out-squashed:squashed"
fi
