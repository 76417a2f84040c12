//! fuse-mount: owned by the node-agent issue (#3); not built yet.
