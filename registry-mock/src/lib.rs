//! registry-mock: see Cargo.toml description.
