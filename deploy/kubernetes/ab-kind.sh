#!/usr/bin/env bash
# The A/B on a real kubelet: a kind cluster (kind.yaml) with a shuttle and a teleporter node,
# the registry (registry.yaml) and teleportd (teleportd.yaml); pushes the fixture image, waits
# for its expansion, runs one pod per node and reads kubelet's `Pulled` events
# ("Successfully pulled image ... in Ns"). Needs docker, kind, kubectl, jq and release builds
# of teleportd, registry-mock and fixtures. Writes OUT (default bench-out/kind) report.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${SCALE:-0.05}
OUT=${OUT:-bench-out/kind}
REG_IP=10.96.0.50:5000
mkdir -p "$OUT"

docker build -q -f deploy/kubernetes/Dockerfile --target teleportd -t teleport-testbed/teleportd:dev .
docker build -q -f deploy/kubernetes/Dockerfile --target registry-mock -t teleport-testbed/registry-mock:dev .
kind create cluster --config deploy/kubernetes/kind.yaml --wait 120s
kind load docker-image --name teleport teleport-testbed/teleportd:dev teleport-testbed/registry-mock:dev

kubectl apply -f deploy/kubernetes/registry.yaml
kubectl -n teleport-system rollout status deploy/registry-mock --timeout=120s
# The shuttle pulls from the same registry over plain http (the teleporter's hosts.toml
# comes from teleportd's DaemonSet).
shuttle=$(kubectl get node -l node-role=shuttle -o jsonpath='{.items[0].metadata.name}')
teleporter=$(kubectl get node -l teleport=enabled -o jsonpath='{.items[0].metadata.name}')
docker exec "$shuttle" sh -c "mkdir -p /etc/containerd/certs.d/$REG_IP && printf 'server = \"http://$REG_IP\"\n[host.\"http://$REG_IP\"]\n  capabilities = [\"pull\", \"resolve\"]\n' > /etc/containerd/certs.d/$REG_IP/hosts.toml"

kubectl apply -f deploy/kubernetes/teleportd.yaml
kubectl -n teleport-system rollout status ds/teleportd --timeout=180s
# containerd reads the drop-in at start: restart it once (running containers survive).
docker exec "$teleporter" systemctl restart containerd
docker exec "$teleporter" sh -c 'for i in $(seq 60); do crictl info >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1'
docker exec "$teleporter" crictl info | jq -e '.config.containerd.snapshotter == "teleportd"'

# Push the fixture through a port-forward and wait until its layers are expanded.
kubectl -n teleport-system port-forward svc/registry-mock 15000:5000 >/dev/null 2>&1 &
pf=$!
trap 'kill $pf 2>/dev/null || true' EXIT
for i in $(seq 30); do curl -fsS -o /dev/null -u admin:change-me http://127.0.0.1:15000/v2/ && break; sleep 1; done
target/release/fixtures build --profile azure-vote-front --scale "$SCALE" --out "$OUT/image"
target/release/fixtures push --layout "$OUT/image" --to 127.0.0.1:15000/azure-vote-front:v1 --user admin:change-me
target/release/registry-mock check-expansion azure-vote-front v1 \
  --registry http://127.0.0.1:15000 --user admin:change-me --timeout 600s

kubectl create namespace ab
for node in shuttle teleporter; do
  sel=$([ $node = shuttle ] && echo "node-role: shuttle" || echo "teleport: enabled")
  kubectl -n ab apply -f - <<POD
apiVersion: v1
kind: Pod
metadata: {name: app-$node}
spec:
  nodeSelector: {$sel}
  restartPolicy: Never
  containers:
    - name: app
      image: $REG_IP/azure-vote-front:v1
      imagePullPolicy: Always
POD
done
kubectl -n ab wait --for=condition=Ready pod/app-shuttle pod/app-teleporter --timeout=600s || true

{
  echo "# Standard pull vs Teleport on kind (kubelet's Pulled events), scale $SCALE"
  echo
  echo "| node | kubelet Pulled message |"
  echo "|---|---|"
  kubectl -n ab get events --field-selector reason=Pulled -o json \
    | jq -r '.items[] | "| \(.involvedObject.name) | \(.message) |"'
  echo
  echo "teleportd metrics (teleporter):"
  echo '```'
  docker exec "$teleporter" curl -fsS http://127.0.0.1:9101/metrics | grep -E 'auth_failures|fuse_mounts|bytes_fetched_total' | head -20 || true
  echo '```'
} | tee "$OUT/report.md"
kubectl -n ab get events --field-selector reason=Pulled -o json | jq -e '[.items[] | select(.message | test("Successfully pulled"))] | length == 2'
