//! benches: criterion benchmarks only.
