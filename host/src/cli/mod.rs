//! Command-line interface: subcommands and their flags (here), what each
//! does (`commands`), and the plugin scaffolding (`template`).

pub mod commands;
pub mod template;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

#[derive(Parser, Debug)]
#[command(
    name = "vendorhost",
    version,
    about = "Unified access to external data vendors; every vendor is a WebAssembly component plugin.",
    long_about = "Clients submit jobs over HTTP (POST /jobs) and poll them (GET /jobs/{id}); workers call each vendor \
through its plugin (a WASI component loaded at run time from the plugins directory); async vendors answer through \
signed webhooks (POST /vendor-webhook/{vendor}).\n\nWith no subcommand, `serve` runs the embedded default: API on \
:8000, workers, in-process mock vendors, one SQLite file as queue and store.",
    after_help = "Configuration: defaults < vendorhost.toml (--config) < VENDORHOST_* env vars (`__` nests) < flags. See README."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// API, workers and mock vendors in one process (the embedded default).
    Serve(ServeArgs),
    /// The HTTP API only (production: pair with `worker` processes).
    Api(ServeArgs),
    /// Workers only: lease jobs, call plugins, store results.
    Worker(ServeArgs),
    /// Run a mock vendor HTTP server (for demos and tests).
    MockVendor(MockArgs),
    /// Inspect, check, create and call plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Work the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Prepare the store: indexes, migrations, sharding.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Generate load against a running service and report throughput and latency.
    Loadtest(vendorhost_loadtest::LoadtestArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "VENDORHOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address [default: 0.0.0.0:8000; env VENDORHOST_LISTEN].
    #[arg(long)]
    pub listen: Option<String>,
    /// Plugins directory [default: plugins/dist; env VENDORHOST_PLUGINS_DIR].
    #[arg(long)]
    pub plugins_dir: Option<PathBuf>,
    /// Embedded database file [default: .vendorhost/vendorhost.db; env VENDORHOST_DATA].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Queue: `sqlite` or `redis://...` [default: sqlite; env VENDORHOST_QUEUE].
    #[arg(long)]
    pub queue: Option<String>,
    /// Store: `sqlite` or `mongodb://...` [default: sqlite; env VENDORHOST_STORE].
    #[arg(long)]
    pub store: Option<String>,
    /// Jobs in flight at once per process [default: 64; env VENDORHOST_WORKERS].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Do not start the in-process mock vendors [env VENDORHOST_MOCKS=false].
    #[arg(long)]
    pub no_mocks: bool,
    /// URL vendors call back [default: from the listen address; env VENDORHOST_PUBLIC_URL].
    #[arg(long)]
    pub public_url: Option<String>,
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            plugins_dir: self.plugins_dir.clone(),
            data: self.data.clone(),
            queue: self.queue.clone(),
            store: self.store.clone(),
            workers: self.workers,
            mocks: self.no_mocks.then_some(false),
            public_url: self.public_url.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct MockArgs {
    /// `sync` or `async`.
    #[arg(value_parser = ["sync", "async"])]
    pub kind: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 9001)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Added latency per call, ms.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fault for every call: none, 429, 429:<secs>, 500, hang, malformed.
    #[arg(long, default_value = "none")]
    pub fault: String,
    /// Async: delay before the callback, ms.
    #[arg(long, default_value_t = 200)]
    pub callback_delay_ms: u64,
    /// Async: Standard Webhooks secret (`whsec_...`) to sign callbacks.
    #[arg(long, env = "VENDORHOST_MOCK_SECRET")]
    pub secret: Option<String>,
    /// A hidden rate limit, e.g. `50/s`: calls over it in a one-second
    /// window are answered 429.
    #[arg(long)]
    pub limit: Option<String>,
    /// With --limit: whether answers carry X-RateLimit-Limit/Remaining/Reset
    /// (and a 429 Retry-After); `false` sends bare 429s.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub limit_headers: bool,
}

#[derive(Subcommand, Debug)]
pub enum PluginsCommand {
    /// Validate plugin files against the vendor-plugin world; print id, mode, version, hosts.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List what would load from a directory (and what would be rejected, and why).
    List {
        #[arg(default_value = "plugins/dist")]
        dir: PathBuf,
    },
    /// Create a new plugin crate from the template.
    New {
        /// The vendor id (lowercase letters, digits, '-').
        name: String,
        /// Where to create it [default: ./<name>].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Call a plugin's `fetch` by hand (async vendors: `accepted` is printed).
    Call {
        file: PathBuf,
        /// The job's data, JSON.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Grant outbound hosts (host, host:port, *.domain, *); repeatable.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Config values for `config-get`, KEY=VALUE; repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// The callback URL handed to async vendors.
        #[arg(long, default_value = "http://127.0.0.1:8000/vendor-webhook/VENDOR")]
        callback_url: String,
        /// Call deadline, ms.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Print the result cleaned as the service would store it (this
        /// vendor's cleaning rules from the service's configuration), and
        /// what cleaning removed.
        #[arg(long)]
        clean: bool,
        /// The service's configuration file for `--clean` (else
        /// `VENDORHOST_CONFIG`, else the built-in rules; `VENDORHOST_*`
        /// variables apply as for `serve`).
        #[arg(long, value_name = "FILE", env = "VENDORHOST_CONFIG")]
        service_config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters (oldest first) with the reason each job died.
    List {
        #[command(flatten)]
        backend: ServeArgs,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send dead jobs back through the queue.
    Replay {
        /// Dead letter id (see `dlq list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter that names a job.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        backend: ServeArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Create every index the store needs (MongoDB) or run the migrations
    /// (SQLite); against a `mongos`, also shard every collection on its
    /// hashed `_id`. Safe to run again: a second run changes nothing and
    /// says what exists.
    Init {
        #[command(flatten)]
        backend: ServeArgs,
    },
}
