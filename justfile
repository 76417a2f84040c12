# Teleport Testbed tasks. `just --list` shows them.

# Run the whole test suite (installs missing system packages as root).
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# Lints as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Criterion micro-benchmarks (expansion, index decode, merge).
bench-micro:
    cargo bench -p benches

# The main job: full-size A/B comparison (azure-vote-front, 944 MB / 29 layers, and its squashed twin).
bench *ARGS:
    bash scripts/bench.sh {{ARGS}}

# A scaled comparison that finishes in about a minute.
bench-quick *ARGS:
    bash scripts/bench.sh --scale 0.02 --reps 1 --out out/bench-quick {{ARGS}}
