//! The configuration: one typed tree, layered defaults < `vendorhost.toml` <
//! `VENDORHOST_*` env vars (`__` nests: `VENDORHOST_VENDORS__SYNC__RATE=5`) <
//! command-line flags. Every duration accepts an integer (milliseconds) or a
//! string with a unit (`"250ms"`, `"5s"`, `"24h"`). An environment value is
//! read as the file would read it (`1e3`, `inf`, `[1, 2]`, `"text"`), and
//! otherwise as plain text (`5s`, `redis://…`).
//!
//! Every value is checked against its allowed range once the layers are
//! merged ([`Config::validate`]), at start-up and on reload: a setting that
//! would panic, stall or silently disable something is refused with its key,
//! where it came from (file, environment variable, flag) and the range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

mod env;
mod validate;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    /// Values outside their allowed range, each naming its key.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    OutOfRange(Vec<BadSetting>),
}

/// One value outside its allowed range.
#[derive(Debug, Clone, PartialEq)]
pub struct BadSetting {
    /// The key path: `queue_settings.lease`, `vendors.sync.rate`.
    pub key: String,
    /// The value as read (never a secret).
    pub value: String,
    /// What is allowed: `100ms to 3650d`, `1 to 10000`.
    pub allowed: String,
    /// Where the value came from (`TOML file …`, `environment variable
    /// VENDORHOST_…`, `command line`), when known.
    pub origin: Option<String>,
    /// The path to look the origin up at, by segment (a vendor id may hold
    /// a dot; an API key is not shown in `key`).
    lookup: Vec<String>,
}

impl std::fmt::Display for BadSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` = {}", self.key, self.value)?;
        if let Some(o) = &self.origin {
            write!(f, " ({o})")?;
        }
        write!(f, ": allowed {}", self.allowed)
    }
}

/// The URL schemes `queue` accepts besides `sqlite`: one Redis node (plain
/// or TLS) or a Redis Cluster (`redis+cluster://h1:p1,h2:p2`).
pub const QUEUE_SCHEMES: [&str; 3] = ["redis://", "rediss://", "redis+cluster://"];

/// Everything the service reads at start-up (and on reload, for `vendors`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// API listen address.
    #[serde(deserialize_with = "text::deserialize")]
    pub listen: String,
    /// The URL vendors call back (`<public_url>/vendor-webhook/<vendor>`).
    /// Empty: derived from the listen address.
    #[serde(deserialize_with = "text::deserialize")]
    pub public_url: String,
    /// Directory of `.wasm` plugins, watched for changes.
    pub plugins_dir: PathBuf,
    /// Compiled-component cache directory. Empty: `<data dir>/cache`.
    pub cache_dir: PathBuf,
    /// Embedded database file (queue and store) when `queue`/`store` are `sqlite`.
    pub data: PathBuf,
    /// `sqlite`, `redis://host:port/db` (one node) or
    /// `redis+cluster://host:port[,host:port...]` (a Redis Cluster).
    #[serde(deserialize_with = "text::deserialize")]
    pub queue: String,
    /// `sqlite` or `mongodb://...`.
    #[serde(deserialize_with = "text::deserialize")]
    pub store: String,
    /// Mongo database name.
    #[serde(deserialize_with = "text::deserialize")]
    pub mongo_db: String,
    /// MongoDB write concern of every store write: `majority`, a number of
    /// nodes, or a tag set name.
    #[serde(deserialize_with = "text::deserialize")]
    pub mongo_write_concern: String,
    /// Whether MongoDB writes wait for the journal.
    pub mongo_journal: bool,
    /// What start-up does to the MongoDB store: `indexes` creates the
    /// missing indexes; `shard` also shards the collections against a
    /// `mongos` (as `vendorhost store init`); `off` touches nothing.
    #[serde(deserialize_with = "text::deserialize")]
    pub mongo_init: String,
    /// Redis key prefix (streams, sets, limits, breakers).
    #[serde(deserialize_with = "text::deserialize")]
    pub redis_prefix: String,
    /// Response timeout of Redis commands: one without an answer by then
    /// fails and its connection is replaced; a blocking read may take its
    /// block time plus this.
    #[serde(with = "duration")]
    pub redis_timeout: Duration,
    /// Worker processes only: serve `/metrics` and `/healthz` here (empty: off).
    #[serde(deserialize_with = "text::deserialize")]
    pub metrics_listen: String,
    /// Worker tasks per process (jobs in flight at once, all vendors).
    pub workers: usize,
    /// Run the in-process mock vendors (embedded default).
    pub mocks: bool,
    pub queue_settings: QueueSettings,
    pub api: ApiSettings,
    pub auth: AuthSettings,
    pub notify: NotifySettings,
    pub telemetry: TelemetrySettings,
    pub retention: RetentionSettings,
    /// Replaces the built-in list of keys naming personal data (unset: the
    /// built-in list, `clean::DEFAULT_PII_KEYS`); a replacement is logged.
    pub pii_keys: Option<Vec<String>>,
    /// Keys added to the list in force.
    pub pii_keys_extra: Vec<String>,
    /// What a value detector's finding does: `redact` (replaced by
    /// `[redacted:<kind>]`) or `drop` (the whole field goes).
    pub pii_action: String,
    /// Value detectors turned on or off by name (`email`, `phone`, `card`,
    /// `iban`, `ssn`); each is on unless set to false.
    pub pii_detectors: BTreeMap<String, bool>,
    /// Defaults for every vendor; `[vendors.<id>]` overrides per field.
    pub vendor_defaults: VendorPolicy,
    /// Per-vendor policy, limits and secrets.
    pub vendors: BTreeMap<String, VendorPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// How long a leased job stays invisible to other workers; a worker that
    /// dies is replaced after this.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// Deliveries (leases that were not acked) before a job is dead-lettered.
    pub max_deliveries: u32,
    /// A `pending` job not recorded as queued after this is re-enqueued.
    #[serde(with = "duration")]
    pub sweep_after: Duration,
    /// How often the sweeper runs.
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
    /// A `pending` or `processing` job overdue by more than this (past its
    /// lease end or retry time) whose queue entry is gone is re-enqueued.
    #[serde(with = "duration")]
    pub recover_after: Duration,
    /// How long a worker waits on an empty queue per poll.
    #[serde(with = "duration")]
    pub poll: Duration,
    /// Grace for in-flight jobs on shutdown.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Jobs of a vendor whose plugin is gone wait this long, then fail with
    /// "vendor removed".
    #[serde(with = "duration")]
    pub removed_vendor_grace: Duration,
    /// Partitions of the Redis queue (each a stream, consumer group, delayed
    /// set and dead-letter set under one hash tag). Unset: 1 on one node, 16
    /// on a cluster. Every process of a deployment must use the same count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<usize>,
    /// A job of lower priority waits at most this long per level behind
    /// later jobs of higher priority of the same API key (aging: no
    /// starvation). Honoured by the embedded queue.
    #[serde(with = "duration")]
    pub priority_aging: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in `data`.
    pub max_json_depth: usize,
    /// Requests handled at once; more get 503 + Retry-After.
    pub max_concurrency: usize,
    /// Whole-request deadline.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// How long an Idempotency-Key binds.
    #[serde(with = "duration")]
    pub idempotency_ttl: Duration,
    /// A client must send a request's whole header within this, or the
    /// connection is closed (slow-loris clients cannot hold connections).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this (slow senders get 408).
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Request body bytes buffered at once, all requests together; past it
    /// requests get 503 + Retry-After.
    pub max_body_bytes_in_flight: usize,
    /// Largest `POST /jobs/batch` body, bytes (up to 1,000 submits).
    pub max_batch_body_bytes: usize,
    /// Open connections from one client address (0: no cap).
    pub max_connections_per_ip: usize,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2: GOAWAY).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A connection is asked to close (HTTP/2: GOAWAY) after this long.
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    /// The longest `GET /jobs/{id}?wait=` a client may ask for; longer
    /// waits are cut to this.
    #[serde(with = "duration")]
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// API keys: key → name. Empty: no authentication on `/jobs`.
    #[serde(deserialize_with = "text::map")]
    pub api_keys: BTreeMap<String, String>,
    /// If set, `/admin/*`, `/metrics` and `/vendors` need `Bearer <admin_key>`.
    #[serde(deserialize_with = "text::deserialize")]
    pub admin_key: String,
    /// Settings per API key, by the key's name (`[auth.keys.<name>]`).
    pub keys: BTreeMap<String, KeySettings>,
}

/// One API key's settings (by its name in `auth.api_keys`). Every field is
/// optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// Standard Webhooks secret (`whsec_<base64>`) that signs this key's
    /// completion notifications; without one its jobs cannot ask for them.
    #[serde(deserialize_with = "text::opt_deserialize")]
    pub notify_secret: Option<String>,
    /// Let this key's `notify_url`s reach non-public addresses.
    pub notify_allow_private: Option<bool>,
    /// Submit requests per second, sustained (`POST /jobs` and
    /// `POST /jobs/batch` take one each); unset: no limit. Shared by every
    /// API process (through Redis beside a Redis queue).
    pub submit_rate: Option<f64>,
    /// Submit requests allowed at once above `submit_rate` (default 1).
    pub submit_burst: Option<u32>,
    /// Jobs of this key pending or processing at once; a submit past it
    /// gets 429 `too_many_in_flight`. Unset: no limit.
    pub max_in_flight: Option<u64>,
    /// Vendor calls allowed per vendor per UTC day or month, by vendor id:
    /// `quotas.weather = { limit = 1000, per = "day" }`.
    pub quotas: BTreeMap<String, KeyQuota>,
    /// This key's share of a busy vendor against other keys' (default 1):
    /// a key of weight 3 gets three calls for each one of a key of weight
    /// 1 while both wait. Honoured by the embedded queue.
    pub weight: Option<f64>,
}

/// A key's quota of calls to one vendor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyQuota {
    /// Vendor calls per period.
    pub limit: u64,
    pub per: QuotaPeriod,
}

/// The period a quota counts over (UTC calendar day or month).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// Completion notifications (`notify_url` on a job).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// A notification not delivered by this long after its job ended is
    /// given up.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// The first retry's delay; each next one doubles, up to `backoff_max`.
    #[serde(with = "duration")]
    pub backoff_base: Duration,
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// Deadline of one delivery attempt (connect, send, answer).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Signs the notifications of jobs submitted without an API key (keys
    /// off): a `whsec_<base64>` secret. Keys have their own
    /// (`auth.keys.<name>.notify_secret`).
    #[serde(deserialize_with = "text::opt_deserialize")]
    pub secret: Option<String>,
    /// Jobs submitted without an API key may notify non-public addresses.
    pub allow_private: bool,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            max_age: Duration::from_secs(24 * 3600),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            secret: None,
            allow_private: false,
        }
    }
}

/// Traces (OpenTelemetry over OTLP/HTTP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`; spans
    /// go to `/v1/traces` under it). Empty: the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else traces are off.
    #[serde(deserialize_with = "text::deserialize")]
    pub otlp_endpoint: String,
    /// The `service.name` spans carry.
    #[serde(deserialize_with = "text::deserialize")]
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings { otlp_endpoint: String::new(), service_name: "vendorhost".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Finished jobs are deleted after this.
    #[serde(with = "duration")]
    pub jobs: Duration,
    /// Dead letters are deleted after this.
    #[serde(with = "duration")]
    pub dead_letters: Duration,
    /// Seen webhook ids are remembered this long (replay window).
    #[serde(with = "duration")]
    pub webhook_ids: Duration,
    /// How often expired jobs, dead letters and ids are deleted.
    #[serde(with = "duration")]
    pub purge_interval: Duration,
}

/// One vendor's policy. Every field is optional: unset fields fall back to
/// `[vendor_defaults]`, then to the plugin's own `info` suggestion, then to
/// built-in defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VendorPolicy {
    /// Hosts `http-send` may reach: `host`, `host:port`, `*.domain`, or `*`;
    /// without a port only the scheme's default port. Deny by default.
    pub allowed_hosts: Option<Vec<String>>,
    /// Let `http-send` reach non-public addresses (loopback, RFC 1918, ULA,
    /// link-local, CGNAT, cloud metadata, ...) of granted hosts. Off: only
    /// IP literals named in `allowed_hosts` are reachable among those.
    pub allow_private_addresses: Option<bool>,
    /// Request headers that carry credentials (besides `Authorization`,
    /// `Cookie` and `Proxy-Authorization`): dropped when a redirect leaves
    /// the origin.
    pub secret_headers: Option<Vec<String>>,
    /// Memory cap per instance, MiB.
    pub memory_mb: Option<u64>,
    /// Deadline per call (wasm + HTTP).
    #[serde(with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Calls per second (GCRA rate).
    pub rate: Option<f64>,
    /// Calls above the rate at once (GCRA burst).
    pub burst: Option<u32>,
    /// Calls in flight at once, across this process (bulkhead).
    pub max_in_flight: Option<usize>,
    /// Attempts before a retryable error fails the job.
    pub max_attempts: Option<u32>,
    /// Backoff base and cap (exponential, full jitter).
    #[serde(with = "opt_duration")]
    pub backoff_base: Option<Duration>,
    #[serde(with = "opt_duration")]
    pub backoff_max: Option<Duration>,
    /// Longest wait a vendor may impose on a retry (`Retry-After`, a
    /// plugin's `retry-after-ms`); longer ones are cut to this.
    #[serde(with = "opt_duration")]
    pub max_retry_after: Option<Duration>,
    /// An accepted async job fails when no webhook came within this.
    #[serde(with = "opt_duration")]
    pub webhook_deadline: Option<Duration>,
    /// Standard Webhooks secrets (`whsec_<base64>`); several for rotation.
    pub webhook_secrets: Option<Vec<String>>,
    /// Timestamp tolerance for webhook signatures.
    #[serde(with = "opt_duration")]
    pub webhook_tolerance: Option<Duration>,
    pub breaker: Option<BreakerPolicy>,
    /// Values the plugin reads through `config-get` (only this vendor's).
    #[serde(default, deserialize_with = "text::opt_map")]
    pub config: Option<BTreeMap<String, String>>,
    /// Keys naming personal data, added to the global list (those of
    /// `[vendor_defaults]` and of the vendor's table both apply).
    pub pii_keys_extra: Option<Vec<String>>,
    /// `redact` or `drop` for this vendor (over the global `pii_action`).
    pub pii_action: Option<String>,
    /// Detectors turned on or off for this vendor, by name (over
    /// `[vendor_defaults]`, over the global `pii_detectors`).
    pub pii_detectors: Option<BTreeMap<String, bool>>,
    /// Paths of fields kept whatever the cleaning rules say
    /// (`record.email_domain`, `items[*].phone`).
    pub pii_allow: Option<Vec<String>>,
    /// Keep each complete (cleaned) result this long and answer identical
    /// jobs from it without a call; identical jobs in flight at once share
    /// one call. Unset: no cache, no coalescing.
    #[serde(with = "opt_duration")]
    pub cache_ttl: Option<Duration>,
    /// Who shares cached results: `key` (jobs of the same API key; the
    /// default) or `global` (every caller).
    pub cache_scope: Option<String>,
}

/// resilience4j-style circuit breaker settings (count-based window).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Calls in the sliding window.
    pub window: u32,
    /// Calls needed before the rates are judged.
    pub min_calls: u32,
    /// Failure rate (percent) at which the breaker opens.
    pub failure_rate: f64,
    /// Slow-call rate (percent) at which the breaker opens.
    pub slow_call_rate: f64,
    /// A call slower than this counts as slow.
    #[serde(with = "duration")]
    pub slow_call: Duration,
    /// How long the breaker stays open before half-open probes.
    #[serde(with = "duration")]
    pub open_for: Duration,
    /// Probes allowed while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            window: 20,
            min_calls: 10,
            failure_rate: 50.0,
            slow_call_rate: 100.0,
            slow_call: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            lease: Duration::from_secs(60),
            max_deliveries: 5,
            sweep_after: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            recover_after: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            removed_vendor_grace: Duration::from_secs(300),
            partitions: None,
            priority_aging: crate::queue::fair::DEFAULT_AGING,
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_concurrency: 4096,
            request_timeout: Duration::from_secs(30),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes_in_flight: 64 * 1024 * 1024,
            max_batch_body_bytes: 16 * 1024 * 1024,
            max_connections_per_ip: 1024,
            idle_timeout: Duration::from_secs(60),
            max_connection_age: Duration::from_secs(30 * 60),
            max_wait: Duration::from_secs(30),
        }
    }
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            jobs: Duration::from_secs(7 * 24 * 3600),
            dead_letters: Duration::from_secs(14 * 24 * 3600),
            webhook_ids: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(600),
        }
    }
}

/// The value detectors `pii_detectors` may name.
pub const PII_DETECTORS: &[&str] = &["email", "phone", "card", "iban", "ssn"];
/// The values of `pii_action`.
pub const PII_ACTIONS: &[&str] = &["redact", "drop"];
/// The values of `mongo_init`.
pub const MONGO_INIT: &[&str] = &["indexes", "shard", "off"];

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8000".into(),
            public_url: String::new(),
            plugins_dir: PathBuf::from("plugins/dist"),
            cache_dir: PathBuf::new(),
            data: PathBuf::from(".vendorhost/vendorhost.db"),
            queue: "sqlite".into(),
            store: "sqlite".into(),
            mongo_db: "vendorhost".into(),
            mongo_write_concern: "majority".into(),
            mongo_journal: true,
            mongo_init: "indexes".into(),
            redis_prefix: "vendorhost".into(),
            redis_timeout: Duration::from_secs(10),
            metrics_listen: String::new(),
            workers: 64,
            mocks: true,
            queue_settings: QueueSettings::default(),
            api: ApiSettings::default(),
            auth: AuthSettings::default(),
            notify: NotifySettings::default(),
            telemetry: TelemetrySettings::default(),
            retention: RetentionSettings::default(),
            pii_keys: None,
            pii_keys_extra: Vec::new(),
            pii_action: "redact".into(),
            pii_detectors: BTreeMap::new(),
            vendor_defaults: VendorPolicy::default(),
            vendors: BTreeMap::new(),
        }
    }
}

/// Values the command line sets; `None` leaves the layer below.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugins_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mocks: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// Env vars that are not configuration keys.
const ENV_NOT_KEYS: &[&str] = &["CONFIG", "LOG", "LOG_FORMAT", "MOCK_SECRET"];

impl Config {
    /// Loads defaults < file (if any) < env < overrides, and validates the
    /// result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_from(file, overrides, env::process_env())
    }

    /// [`Config::load`] with the environment given: every variable, of which
    /// the `VENDORHOST_*` ones are read (tests pass their own).
    pub fn load_from<K, V>(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Config, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut fig = Figment::from(Named("built-in default", Serialized::defaults(Config::default())));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            fig = fig.merge(Toml::file(path));
        }
        for var in env::layers(env, ENV_NOT_KEYS) {
            fig = fig.merge(var);
        }
        fig = fig.merge(Named("command line", Serialized::defaults(overrides)));
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Invalid(describe(e)))?;
        cfg.validate().map_err(|e| with_origins(e, &fig))?;
        Ok(cfg)
    }

    /// Reads only the vendor tables again (for live reload of grants, limits
    /// and secrets). The file and environment must hold a valid
    /// configuration as a whole (as a restart would need): otherwise the
    /// error says why and the caller keeps `self`.
    pub fn reload_vendors(&self, file: Option<&Path>) -> Result<Config, ConfigError> {
        self.reload_vendors_from(file, env::process_env())
    }

    /// [`Config::reload_vendors`] with the environment given.
    pub fn reload_vendors_from<K, V>(
        &self,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Config, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut fresh = Config::load_from(file, &Overrides::default(), env)?;
        let mut cfg = self.clone();
        cfg.vendors = std::mem::take(&mut fresh.vendors);
        cfg.vendor_defaults = fresh.vendor_defaults;
        cfg.pii_keys = fresh.pii_keys;
        cfg.pii_keys_extra = fresh.pii_keys_extra;
        cfg.pii_action = fresh.pii_action;
        cfg.pii_detectors = fresh.pii_detectors;
        Ok(cfg)
    }

    /// Checks every value against its allowed range (see the README's
    /// configuration section), then the values that must parse.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = validate::out_of_range(self);
        if !bad.is_empty() {
            return Err(ConfigError::OutOfRange(bad));
        }
        if !(self.queue == "sqlite" || QUEUE_SCHEMES.iter().any(|s| self.queue.starts_with(s))) {
            return Err(ConfigError::Invalid(format!(
                "queue = {:?}: expected \"sqlite\" or a URL of scheme {}",
                self.queue,
                QUEUE_SCHEMES.join(", ")
            )));
        }
        if !(self.store == "sqlite" || self.store.starts_with("mongodb://") || self.store.starts_with("mongodb+srv://"))
        {
            return Err(ConfigError::Invalid(format!(
                "store = {:?}: expected \"sqlite\" or a mongodb:// URL",
                self.store
            )));
        }
        let tables = self.vendors.iter().map(|(id, p)| (format!("vendors.{id}"), p));
        for (table, p) in tables.chain([("vendor_defaults".to_string(), &self.vendor_defaults)]) {
            for h in p.secret_headers.iter().flatten() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(ConfigError::Invalid(format!("{table}.secret_headers: {h:?} is not a header name")));
                }
            }
        }
        for (name, k) in &self.auth.keys {
            if let Some(r) = k.submit_rate
                && !(r.is_finite() && r > 0.0)
            {
                return Err(ConfigError::Invalid(format!("auth.keys.{name}.submit_rate = {r}: expected a rate > 0")));
            }
            if k.max_in_flight == Some(0) {
                return Err(ConfigError::Invalid(format!("auth.keys.{name}.max_in_flight = 0: expected at least 1")));
            }
            if let Some(w) = k.weight
                && !(w.is_finite() && w > 0.0 && w <= 1_000_000.0)
            {
                return Err(ConfigError::Invalid(format!(
                    "auth.keys.{name}.weight = {w}: expected a number > 0 and at most 1000000"
                )));
            }
        }
        Ok(())
    }

    /// The effective policy of one vendor: `[vendors.<id>]` over `[vendor_defaults]`.
    pub fn vendor(&self, id: &str) -> VendorPolicy {
        let d = &self.vendor_defaults;
        match self.vendors.get(id) {
            None => d.clone(),
            Some(v) => VendorPolicy {
                allowed_hosts: v.allowed_hosts.clone().or_else(|| d.allowed_hosts.clone()),
                allow_private_addresses: v.allow_private_addresses.or(d.allow_private_addresses),
                secret_headers: v.secret_headers.clone().or_else(|| d.secret_headers.clone()),
                memory_mb: v.memory_mb.or(d.memory_mb),
                timeout: v.timeout.or(d.timeout),
                rate: v.rate.or(d.rate),
                burst: v.burst.or(d.burst),
                max_in_flight: v.max_in_flight.or(d.max_in_flight),
                max_attempts: v.max_attempts.or(d.max_attempts),
                backoff_base: v.backoff_base.or(d.backoff_base),
                backoff_max: v.backoff_max.or(d.backoff_max),
                max_retry_after: v.max_retry_after.or(d.max_retry_after),
                webhook_deadline: v.webhook_deadline.or(d.webhook_deadline),
                webhook_secrets: v.webhook_secrets.clone().or_else(|| d.webhook_secrets.clone()),
                webhook_tolerance: v.webhook_tolerance.or(d.webhook_tolerance),
                breaker: v.breaker.clone().or_else(|| d.breaker.clone()),
                config: v.config.clone().or_else(|| d.config.clone()),
                // Added keys add up; detector switches merge per detector.
                pii_keys_extra: match (&d.pii_keys_extra, &v.pii_keys_extra) {
                    (Some(a), Some(b)) => Some(a.iter().chain(b).cloned().collect()),
                    (a, b) => b.clone().or_else(|| a.clone()),
                },
                pii_action: v.pii_action.clone().or_else(|| d.pii_action.clone()),
                pii_detectors: match (&d.pii_detectors, &v.pii_detectors) {
                    (Some(a), Some(b)) => Some(a.iter().chain(b).map(|(k, on)| (k.clone(), *on)).collect()),
                    (a, b) => b.clone().or_else(|| a.clone()),
                },
                pii_allow: v.pii_allow.clone().or_else(|| d.pii_allow.clone()),
                cache_ttl: v.cache_ttl.or(d.cache_ttl),
                cache_scope: v.cache_scope.clone().or_else(|| d.cache_scope.clone()),
            },
        }
    }

    pub fn is_embedded_queue(&self) -> bool {
        self.queue == "sqlite"
    }

    pub fn is_embedded_store(&self) -> bool {
        self.store == "sqlite"
    }

    pub fn cache_dir(&self) -> PathBuf {
        if self.cache_dir.as_os_str().is_empty() {
            self.data.parent().map(|p| p.join("cache")).unwrap_or_else(|| PathBuf::from("cache"))
        } else {
            self.cache_dir.clone()
        }
    }
}

/// One line naming the key and what is wrong with it.
fn describe(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let path = err.path.join(".");
        let src = err.metadata.as_ref().map(origin).unwrap_or_default();
        let kind = err.kind.to_string();
        if path.is_empty() {
            out.push(format!("{kind} ({src})"));
        } else {
            out.push(format!("key `{path}`: {kind} ({src})"));
        }
    }
    out.join("; ")
}

/// Where a layer's values come from: `TOML file <path>`, `environment
/// variable VENDORHOST_…`, `command line`.
fn origin(m: &Metadata) -> String {
    match &m.source {
        Some(source) => format!("{} {source}", m.name),
        None => m.name.to_string(),
    }
}

/// Names the layer each out-of-range value came from.
fn with_origins(e: ConfigError, fig: &Figment) -> ConfigError {
    match e {
        ConfigError::OutOfRange(mut bad) => {
            for b in &mut bad {
                b.origin = origin_at(fig, &b.lookup);
            }
            ConfigError::OutOfRange(bad)
        }
        other => other,
    }
}

/// The origin of the value at `path`.
fn origin_at(fig: &Figment, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut value = fig.find_value(first).ok()?;
    for segment in rest {
        value = value.into_dict()?.remove(segment)?;
    }
    fig.get_metadata(value.tag()).map(origin)
}

/// A layer under a name an error can show (`built-in default`, `command
/// line`).
struct Named<P>(&'static str, P);

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.0)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.1.data()
    }
}

/// Parses `250`, `"250"` (milliseconds) or `"250ms"`, `"5s"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use milliseconds or e.g. \"250ms\", \"5s\")"))
}

mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Int(ms) => Ok(Duration::from_millis(ms)),
            Raw::Float(ms) if ms < 0.0 => {
                Err(serde::de::Error::custom(format!("invalid duration {ms}: a duration cannot be negative")))
            }
            Raw::Float(ms) => Duration::try_from_secs_f64(ms / 1000.0)
                .map_err(|_| serde::de::Error::custom(format!("invalid duration {ms}: not a finite number of ms"))),
            Raw::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Text settings that a number or a boolean may spell (an environment
/// variable `VENDORHOST_REDIS_PREFIX=123` reads as the integer 123, as the
/// file's TOML would; a text field takes it as "123").
mod text {
    use serde::{Deserialize, Deserializer};
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }

    impl From<Scalar> for String {
        fn from(s: Scalar) -> String {
            match s {
                Scalar::Text(t) => t,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Scalar::deserialize(d).map(String::from)
    }

    /// Optional text.
    pub fn opt_deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Scalar>::deserialize(d)?.map(String::from))
    }

    /// A table of text values.
    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        Ok(BTreeMap::<String, Scalar>::deserialize(d)?.into_iter().map(|(k, v)| (k, v.into())).collect())
    }

    /// An optional table of text values.
    pub fn opt_map<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
        Ok(Option::<BTreeMap<String, Scalar>>::deserialize(d)?
            .map(|m| m.into_iter().map(|(k, v)| (k, v.into())).collect()))
    }
}

mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::duration")] Duration);
        Option::<W>::deserialize(d).map(|o| o.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_millis_and_units() {
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendorhost.toml");
        std::fs::write(
            &path,
            "workers = 3\n[queue_settings]\nlease = 1500\n[vendors.sync]\nrate = 2.5\ntimeout = \"2s\"\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&path), &Overrides { workers: Some(7), ..Default::default() }).unwrap();
        assert_eq!(cfg.workers, 7, "flags beat the file");
        assert_eq!(cfg.queue_settings.lease, Duration::from_millis(1500));
        assert_eq!(cfg.vendor("sync").rate, Some(2.5));
        assert_eq!(cfg.vendor("sync").timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_key_weight_must_be_positive_and_defaults_to_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendorhost.toml");
        let keys = "[auth.api_keys]\nk1 = \"acme\"\n[auth.keys.acme]\n";
        std::fs::write(&path, format!("{keys}weight = 3\n")).unwrap();
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.auth.keys["acme"].weight, Some(3.0));
        assert_eq!(cfg.queue_settings.priority_aging, Duration::from_secs(30));
        for bad in ["0", "-1", "nan"] {
            std::fs::write(&path, format!("{keys}weight = {bad}\n")).unwrap();
            let err = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("auth.keys.acme.weight"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendorhost.toml");
        std::fs::write(&path, "wokers = 3\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("wokers"), "{err}");
    }

    #[test]
    fn outbound_settings_merge_and_header_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendorhost.toml");
        std::fs::write(
            &path,
            "[vendor_defaults]\nsecret_headers = [\"X-Api-Key\"]\n\
             [vendors.a]\nallow_private_addresses = true\n[vendors.b]\nsecret_headers = []\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.vendor("a").allow_private_addresses, Some(true));
        assert_eq!(cfg.vendor("a").secret_headers, Some(vec!["X-Api-Key".to_string()]));
        assert_eq!(cfg.vendor("b").allow_private_addresses, None);
        assert_eq!(cfg.vendor("b").secret_headers, Some(vec![]));
        std::fs::write(&path, "[vendors.a]\nsecret_headers = [\"X Api Key\"]\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("vendors.a.secret_headers") && err.contains("X Api Key"), "{err}");
    }
}
