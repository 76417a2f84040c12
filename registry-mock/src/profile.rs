//! Learned start profiles (the document is [`emulator::profile`]): the registry's limits.

pub use emulator::profile::*;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;
