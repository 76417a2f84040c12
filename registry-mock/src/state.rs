//! The shared application state handed to every request: a cheap `Arc` over the parts.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::Auth;
use crate::expansion::Expander;
use crate::link::{Limiter, LinkConfig};
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::Limits;

pub struct AppState {
    pub store: Store,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub expander: Expander,
    /// Open blob-upload sessions (`routes::uploads`).
    pub uploads: Sessions,
    pub limits: Limits,
    pub limiter: Option<Arc<Limiter>>,
    pub link: LinkConfig,
    pub addr: SocketAddr,
    /// Serialises read-modify-write of repository attributes.
    pub attrs_lock: tokio::sync::Mutex<()>,
}
