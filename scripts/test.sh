#!/usr/bin/env bash
# The test command: installs missing system packages (as root, via apt), then runs every test of
# the workspace for real: proptests, registry interop with skopeo and containerd, FUSE/overlay tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PROPTEST_CASES=${PROPTEST_CASES:-256}
exec cargo test --workspace "$@"
