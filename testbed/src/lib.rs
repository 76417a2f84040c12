//! testbed: owned by the testbed issue (#4); not built yet.
