//! The API's own JSON shapes for domain values it shows (job status, dead
//! letters, plugins, breakers): the wire format and its OpenAPI description
//! live here, so the domain types carry no API or OpenAPI concerns.

use serde::Serialize;

use crate::breaker::BreakerSnapshot;
use crate::model::{DeadLetter, Redaction, Status};
use crate::plugins::{PluginEvent, Rejected, VendorSummary};

/// A job's state: `pending → processing → complete | failed`, or
/// `cancelled` by its client from `pending` or `processing`. Only forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Processing,
    Complete,
    Failed,
    Cancelled,
}

impl From<Status> for JobStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Pending => JobStatus::Pending,
            Status::Processing => JobStatus::Processing,
            Status::Complete => JobStatus::Complete,
            Status::Failed => JobStatus::Failed,
            Status::Cancelled => JobStatus::Cancelled,
        }
    }
}

/// One thing cleaning removed from a job's result (never the value).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedactionView {
    /// Where it was in the vendor's answer: keys joined by `.`, array
    /// elements as `[i]`, `$` for the answer itself.
    #[schema(example = "owner.email")]
    pub path: String,
    /// `key` (a key naming personal data), `email`, `phone`, `card`, `iban`,
    /// `ssn` (what a detector found), or `truncated` (more than listed).
    #[schema(example = "key")]
    pub kind: String,
}

impl From<Redaction> for RedactionView {
    fn from(r: Redaction) -> Self {
        RedactionView { path: r.path, kind: r.kind }
    }
}

/// A job (or a raw queue entry) that will not be retried, and why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// The dead letter's own id.
    pub id: String,
    /// The job, when the entry could be decoded.
    pub request_id: Option<String>,
    pub vendor: Option<String>,
    /// The raw entry, for malformed ones.
    pub payload: String,
    pub reason: String,
    /// Epoch milliseconds.
    pub died_at: i64,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        DeadLetterView {
            id: d.id,
            request_id: d.request_id,
            vendor: d.vendor,
            payload: d.payload,
            reason: d.reason,
            died_at: d.died_at,
        }
    }
}

/// A loaded plugin.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginView {
    /// The vendor id clients name in `POST /jobs`.
    pub id: String,
    pub display_name: String,
    /// `sync` or `async`.
    #[schema(example = "sync")]
    pub mode: &'static str,
    pub version: String,
    /// The file in the plugins directory.
    pub file: String,
    pub sha256: String,
    /// Hosts the plugin says it needs.
    pub hosts: Vec<String>,
    /// When this version was loaded (epoch milliseconds).
    pub loaded_at: i64,
}

impl From<VendorSummary> for PluginView {
    fn from(s: VendorSummary) -> Self {
        PluginView {
            id: s.id,
            display_name: s.display_name,
            mode: s.mode.as_str(),
            version: s.version,
            file: s.file,
            sha256: s.sha256,
            hosts: s.hosts,
            loaded_at: s.loaded_at,
        }
    }
}

/// A plugin file that was refused, and why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectedView {
    /// The file name in the plugins directory.
    pub file: String,
    pub reason: String,
}

impl From<Rejected> for RejectedView {
    fn from(r: Rejected) -> Self {
        RejectedView { file: r.file, reason: r.reason }
    }
}

/// One change to the loaded plugins.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginEventView {
    /// Epoch milliseconds.
    pub at: i64,
    /// `loaded` (a new vendor), `reloaded` (its file changed; the new
    /// version serves), `removed`, or `rejected` (the previous version, if
    /// any, keeps serving).
    #[schema(example = "reloaded")]
    pub kind: &'static str,
    /// The vendor (absent for a file rejected before it named one).
    pub vendor: Option<String>,
    /// The file in the plugins directory.
    pub file: String,
    pub version: Option<String>,
    pub sha256: Option<String>,
    /// Why a file was rejected.
    pub reason: Option<String>,
}

impl From<PluginEvent> for PluginEventView {
    fn from(e: PluginEvent) -> Self {
        PluginEventView {
            at: e.at,
            kind: e.kind,
            vendor: e.vendor,
            file: e.file,
            version: e.version,
            sha256: e.sha256,
            reason: e.reason,
        }
    }
}

/// A vendor's circuit breaker.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BreakerView {
    /// `closed`, `open` or `half_open` (an open breaker past its time shows
    /// as `half_open`: the next call is a probe).
    pub state: &'static str,
    /// Percent of the calls counted (the window; the probes if half-open).
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub calls: u32,
    pub failures: u32,
    pub slow_calls: u32,
    /// Epoch milliseconds when an open breaker lets probes through.
    pub open_until: Option<i64>,
    pub transitions: TransitionsView,
}

/// Transitions made so far.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransitionsView {
    pub opened: u64,
    pub half_opened: u64,
    pub closed: u64,
}

impl From<BreakerSnapshot> for BreakerView {
    fn from(b: BreakerSnapshot) -> Self {
        BreakerView {
            state: b.state,
            failure_rate: b.failure_rate,
            slow_call_rate: b.slow_call_rate,
            calls: b.calls,
            failures: b.failures,
            slow_calls: b.slow_calls,
            open_until: b.open_until,
            transitions: TransitionsView {
                opened: b.transitions.opened,
                half_opened: b.transitions.half_opened,
                closed: b.transitions.closed,
            },
        }
    }
}
