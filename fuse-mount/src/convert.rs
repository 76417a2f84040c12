//! Conversions between containerd's protobuf types and our snapshot domain types, plus the one
//! place snapshot errors become gRPC statuses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use node_api::snapshots as pb;
use node_api::types as pbt;
use prost_types::Timestamp;
use tonic::Status;

use crate::labels::Labels;
use crate::snapshot::{FieldPath, Info, Kind, Mount, SnapshotError};

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Status {
        match e {
            SnapshotError::AlreadyExists(k) => {
                Status::already_exists(format!("snapshot {k}: already exists"))
            }
            SnapshotError::NotFound(k) => Status::not_found(format!("snapshot {k}: not found")),
            SnapshotError::FailedPrecondition(m) => Status::failed_precondition(m),
            SnapshotError::InvalidArgument(m) => Status::invalid_argument(m),
            e @ SnapshotError::Remote(_) => Status::unavailable(e.to_string()),
            e => {
                tracing::error!(error = %e, "internal snapshotter error");
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<Kind> for pb::Kind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        }
    }
}

impl TryFrom<i32> for Kind {
    type Error = Status;
    fn try_from(v: i32) -> Result<Self, Status> {
        match pb::Kind::try_from(v) {
            Ok(pb::Kind::View) => Ok(Kind::View),
            Ok(pb::Kind::Active) => Ok(Kind::Active),
            Ok(pb::Kind::Committed) => Ok(Kind::Committed),
            Ok(pb::Kind::Unknown) | Err(_) => Err(Status::invalid_argument(format!(
                "unknown snapshot kind {v}"
            ))),
        }
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // invariant: subsec_nanos < 1e9 fits i32.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn system_time(t: Option<Timestamp>) -> SystemTime {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    })
    .unwrap_or(UNIX_EPOCH)
}

impl From<Info> for pb::Info {
    fn from(i: Info) -> Self {
        pb::Info {
            name: i.name,
            parent: i.parent,
            kind: pb::Kind::from(i.kind) as i32,
            created_at: Some(timestamp(i.created)),
            updated_at: Some(timestamp(i.updated)),
            labels: i.labels.into_iter().collect(),
        }
    }
}

impl TryFrom<pb::Info> for Info {
    type Error = Status;
    fn try_from(i: pb::Info) -> Result<Self, Status> {
        if i.name.is_empty() {
            return Err(Status::invalid_argument("info.name is required"));
        }
        Ok(Info {
            name: i.name,
            parent: i.parent,
            // Update ignores kind; containerd sends the stored value or 0.
            kind: Kind::try_from(i.kind).unwrap_or(Kind::Committed),
            labels: labels(i.labels),
            created: system_time(i.created_at),
            updated: system_time(i.updated_at),
        })
    }
}

impl From<Mount> for pbt::Mount {
    fn from(m: Mount) -> Self {
        pbt::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        }
    }
}

pub fn mounts(m: Vec<Mount>) -> Vec<pbt::Mount> {
    m.into_iter().map(Into::into).collect()
}

pub fn labels(l: std::collections::HashMap<String, String>) -> Labels {
    l.into_iter().collect()
}

/// Update field paths: `labels` or `labels.<key>`; anything else cannot be changed.
pub fn field_path(p: &str) -> Result<FieldPath, Status> {
    match p {
        "labels" => Ok(FieldPath::Labels),
        _ => match p.strip_prefix("labels.") {
            Some(k) if !k.is_empty() => Ok(FieldPath::Label(k.to_owned())),
            _ => Err(Status::invalid_argument(format!(
                "cannot update field {p:?}: only labels are mutable"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_and_kinds_round_trip() {
        let code = |e| Status::from(e).code();
        assert_eq!(
            code(SnapshotError::AlreadyExists("k".into())),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(SnapshotError::NotFound("k".into())),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(SnapshotError::FailedPrecondition("x".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(SnapshotError::InvalidArgument("x".into())),
            tonic::Code::InvalidArgument
        );
        for k in [Kind::View, Kind::Active, Kind::Committed] {
            assert_eq!(Kind::try_from(pb::Kind::from(k) as i32).unwrap(), k);
        }
        assert!(Kind::try_from(0).is_err() && Kind::try_from(42).is_err());
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        assert_eq!(system_time(Some(timestamp(t))), t);
        assert_eq!(
            field_path("labels.a.b").unwrap(),
            FieldPath::Label("a.b".into())
        );
        assert!(field_path("parent").is_err() && field_path("labels.").is_err());
    }
}
