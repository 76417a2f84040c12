#!/usr/bin/env bash
# The main job: the A/B comparison (standard pull vs Teleport) on real containerd nodes.
# Installs missing system packages (as root), builds in release mode, runs `testbed compare`.
# Extra arguments go to `testbed compare` (see `testbed compare --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p testbed -p fuse-mount -p registry-mock -p fixtures
exec target/release/testbed compare "$@"
