//! Running the service in-process (embedded or production backends) and as
//! child processes, on free ports, with short durations.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::oneshot;
use vendorhost::app::{self, Role};
use vendorhost::config::Config;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the plugins once per test run if they are missing.
pub fn ensure_plugins() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        if root.join("plugins/dist/sync.wasm").exists()
            && root.join("plugins/dist-test/echo-v2.wasm").exists()
            && root.join("plugins/dist-test/test-needs.wasm").exists()
        {
            return;
        }
        let st = Command::new("bash").arg(root.join("plugins/build.sh")).status().expect("run plugins/build.sh");
        assert!(st.success(), "plugins/build.sh failed: run `make build-plugins` to see why");
    });
}

/// A sample plugin (`sync`, `async`).
pub fn plugin(name: &str) -> PathBuf {
    ensure_plugins();
    repo_root().join("plugins/dist").join(format!("{name}.wasm"))
}

/// A test plugin (`test-loop`, `echo-v1`, ...).
pub fn test_plugin(name: &str) -> PathBuf {
    ensure_plugins();
    repo_root().join("plugins/dist-test").join(format!("{name}.wasm"))
}

/// The compile cache shared by every test (components compile once per run).
pub fn cache_dir() -> PathBuf {
    let d = repo_root().join("target/test-component-cache");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh plugins directory holding copies of the given plugin files.
pub fn plugins_dir(files: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    dir
}

/// Embedded configuration with short durations, data in `data_dir`.
pub fn embedded_config(data_dir: &Path, plugins: &Path) -> Config {
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        data: data_dir.join("vendorhost.db"),
        plugins_dir: plugins.to_path_buf(),
        cache_dir: cache_dir(),
        workers: 16,
        ..Config::default()
    };
    cfg.queue_settings.lease = Duration::from_secs(5);
    cfg.queue_settings.poll = Duration::from_millis(200);
    cfg.queue_settings.sweep_after = Duration::from_millis(500);
    cfg.queue_settings.sweep_interval = Duration::from_millis(200);
    cfg.queue_settings.shutdown_grace = Duration::from_secs(3);
    cfg.queue_settings.removed_vendor_grace = Duration::from_secs(2);
    cfg.vendor_defaults.backoff_base = Some(Duration::from_millis(50));
    cfg.vendor_defaults.backoff_max = Some(Duration::from_millis(500));
    cfg
}

/// Production backends (Redis queue, nx-27017 store) with a unique prefix and db.
pub fn production_config(data_dir: &Path, plugins: &Path) -> Config {
    let mut cfg = embedded_config(data_dir, plugins);
    cfg.queue = super::servers::redis().url.clone();
    cfg.store = super::servers::mongo().uri.clone();
    cfg.redis_prefix = super::servers::unique("vh");
    cfg.mongo_db = super::servers::unique("vh");
    cfg
}

/// Production backends on the shared 3-master Redis Cluster (16 partitions)
/// and nx-27017, with a unique prefix and db.
pub fn cluster_config(data_dir: &Path, plugins: &Path) -> Config {
    let mut cfg = production_config(data_dir, plugins);
    cfg.queue = super::servers::redis_cluster().url.clone();
    cfg
}

/// The service running in this process.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), app::StartError>>>,
}

impl TestApp {
    pub async fn start(cfg: Config) -> TestApp {
        Self::start_role(cfg, Role::Serve, tempfile::tempdir().unwrap()).await
    }

    pub async fn start_role(cfg: Config, role: Role, data: tempfile::TempDir) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(cfg, None, role, Some(listener), async move {
            let _ = rx.await;
        }));
        let app = TestApp { base, client: reqwest::Client::new(), data, stop: Some(tx), task: Some(task) };
        app.wait_ready().await;
        app
    }

    /// Like `start`, and `config_path` is watched: edits to its vendor
    /// tables (grants, limits, secrets) apply without a restart.
    pub async fn start_with_config_file(cfg: Config, config_path: PathBuf) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(cfg, Some(config_path), Role::Serve, Some(listener), async move {
            let _ = rx.await;
        }));
        let app = TestApp {
            base,
            client: reqwest::Client::new(),
            data: tempfile::tempdir().unwrap(),
            stop: Some(tx),
            task: Some(task),
        };
        app.wait_ready().await;
        app
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.client.get(format!("{}/healthz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "service at {} did not come up", self.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST /jobs; returns (status, body).
    pub async fn post_job(&self, body: Value) -> (u16, Value) {
        let r = self.client.post(self.url("/jobs")).json(&body).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Submits and returns the request id (asserts 202).
    pub async fn submit(&self, vendor: &str, data: Value) -> String {
        let (s, b) = self.post_job(json!({"vendor": vendor, "data": data})).await;
        assert_eq!(s, 202, "submit {vendor}: {b}");
        b["request_id"].as_str().unwrap().to_string()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.client.get(self.url(&format!("/jobs/{id}"))).send().await.unwrap().json().await.unwrap()
    }

    /// Polls until the job is complete or failed.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        wait_terminal(&self.client, &self.base, id, timeout).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        self.client.get(self.url(path)).send().await.unwrap().json().await.unwrap()
    }

    /// Stops (SIGTERM-like) and waits for a clean exit.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(30), t).await.expect("app did not stop in time");
            r.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn wait_terminal(client: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Value {
    match poll_terminal(client, base, id, timeout).await {
        Ok(v) => v,
        Err(last) => panic!("job {id} did not finish within {timeout:?}; last seen: {last}"),
    }
}

/// Polls until the job is terminal; on timeout, the last state seen (so a
/// caller can add its own context, a process log say, to the failure).
pub async fn poll_terminal(client: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Result<Value, Value> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    loop {
        if let Ok(r) = client.get(format!("{base}/jobs/{id}")).send().await
            && let Ok(v) = r.json::<Value>().await
        {
            if matches!(v["status"].as_str(), Some("complete" | "failed")) {
                return Ok(v);
            }
            last = v;
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `vendorhost` binary as a child process (killed on drop).
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Runs `vendorhost <args>` with `VENDORHOST_*` env from `env`.
    pub fn spawn(args: &[&str], env: &[(&str, String)], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vendorhost"));
        cmd.args(args).stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc { child: cmd.spawn().unwrap(), log }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// SIGTERM, then wait for the exit status.
    pub fn term(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Env vars that make a child process use `cfg`'s backends and short durations.
pub fn env_for(cfg: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("VENDORHOST_QUEUE", cfg.queue.clone()),
        ("VENDORHOST_STORE", cfg.store.clone()),
        ("VENDORHOST_DATA", cfg.data.display().to_string()),
        ("VENDORHOST_REDIS_PREFIX", cfg.redis_prefix.clone()),
        ("VENDORHOST_MONGO_DB", cfg.mongo_db.clone()),
        ("VENDORHOST_PLUGINS_DIR", cfg.plugins_dir.display().to_string()),
        ("VENDORHOST_CACHE_DIR", cfg.cache_dir.display().to_string()),
        ("VENDORHOST_QUEUE_SETTINGS__LEASE", cfg.queue_settings.lease.as_millis().to_string()),
        ("VENDORHOST_QUEUE_SETTINGS__POLL", cfg.queue_settings.poll.as_millis().to_string()),
        ("VENDORHOST_QUEUE_SETTINGS__SWEEP_AFTER", cfg.queue_settings.sweep_after.as_millis().to_string()),
        ("VENDORHOST_QUEUE_SETTINGS__SWEEP_INTERVAL", cfg.queue_settings.sweep_interval.as_millis().to_string()),
        ("VENDORHOST_QUEUE_SETTINGS__SHUTDOWN_GRACE", cfg.queue_settings.shutdown_grace.as_millis().to_string()),
        ("VENDORHOST_LOG", "info".to_string()),
    ]
}

/// The counter `name` at `app`'s `/metrics`, summed over the series that carry
/// all of `labels`.
pub async fn counter(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
