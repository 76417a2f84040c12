//! Thin gRPC adapter: unpack the request, reject missing fields, call the [`Snapshotter`],
//! convert back. No snapshot logic lives here.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use node_api::snapshots as pb;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::snapshot::Snapshotter;
use node_api::snapshots::snapshots_server::{Snapshots, SnapshotsServer};

pub struct Wrap<S>(Arc<S>);

pub fn server<S: Snapshotter>(s: Arc<S>) -> SnapshotsServer<Wrap<S>> {
    SnapshotsServer::new(Wrap(s))
}

fn required(field: &str, v: String) -> Result<String, Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(v)
    }
}

/// containerd sends a List's infos in batches; keep each message well under gRPC's 4 MiB.
const LIST_BATCH: usize = 100;

#[tonic::async_trait]
impl<S: Snapshotter> Snapshots for Wrap<S> {
    async fn prepare(
        &self,
        r: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let m = self
            .0
            .prepare(required("key", r.key)?, r.parent, convert::labels(r.labels))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: convert::mounts(m),
        }))
    }

    async fn view(
        &self,
        r: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let m = self
            .0
            .view(required("key", r.key)?, r.parent, convert::labels(r.labels))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: convert::mounts(m),
        }))
    }

    async fn mounts(
        &self,
        r: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let m = self.0.mounts(required("key", r.into_inner().key)?).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: convert::mounts(m),
        }))
    }

    async fn commit(&self, r: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        self.0
            .commit(
                required("name", r.name)?,
                required("key", r.key)?,
                convert::labels(r.labels),
            )
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        self.0.remove(required("key", r.into_inner().key)?).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let i = self.0.stat(required("key", r.into_inner().key)?).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(i.into()),
        }))
    }

    async fn update(
        &self,
        r: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("info is required"))?
            .try_into()?;
        let fields = r
            .update_mask
            .map(|m| m.paths)
            .unwrap_or_default()
            .iter()
            .map(|p| convert::field_path(p))
            .collect::<Result<Vec<_>, _>>()?;
        let i = self.0.update(info, fields).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(i.into()),
        }))
    }

    type ListStream =
        Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send + 'static>>;

    async fn list(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let infos = self.0.list(r.into_inner().filters).await?;
        let mut batches = Vec::new();
        let mut it = infos.into_iter().map(pb::Info::from).peekable();
        while it.peek().is_some() {
            batches.push(Ok(pb::ListSnapshotsResponse {
                info: it.by_ref().take(LIST_BATCH).collect(),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(
        &self,
        r: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let u = self.0.usage(required("key", r.into_inner().key)?).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _r: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.0.cleanup().await?;
        Ok(Response::new(()))
    }
}
