//! Throwaway Redis and Mongo (nx-27017) servers for integration tests.
//!
//! `redis()` and `mongo()` start one server per test binary, shared by its
//! tests; isolate tests with `unique(..)` key prefixes / database names.
//! Each server runs under a small `sh` watchdog that holds a pipe from this
//! process: when the test binary exits (statics are never dropped), the pipe
//! closes and the watchdog kills the server's process group and removes its
//! directory.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Kills the server (and anything it forked: the watchdog leads the process
/// group) once stdin closes, then cleans up.
const WATCHDOG: &str = r#"
dir=$1; shift
"$@" </dev/null >"$dir/server.log" 2>&1 &
srv=$!
echo $srv >"$dir/server.pid"
cat >/dev/null
kill -TERM $srv 2>/dev/null
i=0
while kill -0 $srv 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
rm -rf "$dir"
kill -KILL 0
"#;

/// A port free right now on 127.0.0.1 (the caller retries if it is taken).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A name unique in this run: `<prefix>_<pid>_<n>`, valid as a Redis key
/// prefix and a MongoDB database name.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A server process under its watchdog.
struct Watched {
    watchdog: Child,
    /// Dropping it closes the pipe: the watchdog's signal to clean up.
    stdin: Option<ChildStdin>,
    dir: PathBuf,
}

impl Watched {
    fn spawn(program: &Path, args: &[String], dir: PathBuf) -> Watched {
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(&dir)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stdin = watchdog.stdin.take();
        Watched { watchdog, stdin, dir }
    }

    /// False once the server process is gone (or a zombie).
    fn alive(&self) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.dir.join("server.pid")) else {
            return true; // not written yet: still starting
        };
        match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the server process.
    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join("server.pid")).expect("the server's pid");
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(pid.trim()).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{signal} {pid} failed");
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Polls `ready` until it holds, the server dies, or `timeout` passes.
    fn wait_ready(&self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if !self.alive() {
                return Err(format!("{what} exited during start-up; its log:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("{what} not ready after {timeout:?}; its log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.watchdog.wait();
    }
}

fn temp_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("create a temp dir").keep()
}

/// `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The repository root (the parent of this crate).
fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

pub struct RedisServer {
    pub port: u16,
    /// `redis://127.0.0.1:<port>/`
    pub url: String,
    proc: Watched,
}

impl RedisServer {
    /// Sends `signal` to the server: "STOP" freezes it, "CONT" thaws it.
    pub fn signal(&self, signal: &str) {
        self.proc.signal(signal);
    }

    /// Starts a private redis-server (no persistence). Panics with a clear
    /// message if it cannot.
    pub fn start() -> RedisServer {
        let program = std::env::var_os("REDIS_SERVER")
            .map(PathBuf::from)
            .or_else(|| on_path("redis-server"))
            .unwrap_or_else(|| panic!("redis-server not found: run `make test`, which installs it"));
        let mut last = String::new();
        // A free port can be taken before the server binds it: retry.
        for _ in 0..3 {
            let port = free_port();
            let dir = temp_dir("vh-redis-");
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let proc = Watched::spawn(&program, &args, dir);
            match proc.wait_ready("redis-server", Duration::from_secs(10), || redis_pings(port)) {
                Ok(()) => {
                    return RedisServer { port, url: format!("redis://127.0.0.1:{port}/"), proc };
                }
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }
}

fn redis_pings(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

pub struct MongoServer {
    pub port: u16,
    /// `mongodb://127.0.0.1:<port>/?directConnection=true`
    pub uri: String,
    proc: Watched,
}

impl MongoServer {
    /// Sends `signal` to the server: "STOP" freezes it (every request hangs,
    /// connections stay open), "CONT" thaws it.
    pub fn signal(&self, signal: &str) {
        self.proc.signal(signal);
    }

    /// Starts a private in-memory nx-27017 (the MongoDB wire-protocol
    /// stand-in). Panics with a clear message if it cannot.
    pub fn start() -> MongoServer {
        let program = nx_27017().unwrap_or_else(|| {
            panic!("nx-27017 not found (set NX_27017, or install it in .venv): run `make test`, which installs it")
        });
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = temp_dir("vh-nx-");
            let args = vec![
                "--db".to_string(),
                "memory".into(),
                "-p".into(),
                port.to_string(),
                "--log-file".into(),
                dir.join("nx.log").to_string_lossy().into_owned(),
                "--pid-file".into(),
                dir.join("nx.pid").to_string_lossy().into_owned(),
            ];
            let proc = Watched::spawn(&program, &args, dir);
            let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
            let ready = proc
                .wait_ready("nx-27017", Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok())
                .and_then(|()| mongo_pings(&uri));
            match ready {
                Ok(()) => return MongoServer { port, uri, proc },
                Err(e) => last = e,
            }
        }
        panic!("could not start nx-27017: {last}");
    }
}

/// `NX_27017`, then `.venv/bin/nx-27017` under the repository, then
/// `/tmp/nxvenv/bin/nx-27017`, then PATH.
pub fn nx_27017() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("NX_27017").map(PathBuf::from),
        Some(repo_root().join(".venv/bin/nx-27017")),
        Some(PathBuf::from("/tmp/nxvenv/bin/nx-27017")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file()).or_else(|| on_path("nx-27017"))
}

/// A MongoDB `ping`, on a thread of its own (callers may be inside a runtime).
fn mongo_pings(uri: &str) -> Result<(), String> {
    let uri = uri.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut opts = mongodb::options::ClientOptions::parse(&uri).await.map_err(|e| e.to_string())?;
            opts.server_selection_timeout = Some(Duration::from_secs(10));
            let client = mongodb::Client::with_options(opts).map_err(|e| e.to_string())?;
            let ping = client.database("admin").run_command(mongodb::bson::doc! { "ping": 1 }).await;
            ping.map(|_| ()).map_err(|e| format!("nx-27017 does not answer ping: {e}"))
        })
    })
    .join()
    .map_err(|_| "mongo ping thread panicked".to_string())?
}

/// The Redis server shared by this test binary.
pub fn redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// The nx-27017 server shared by this test binary.
pub fn mongo() -> &'static MongoServer {
    static SERVER: OnceLock<MongoServer> = OnceLock::new();
    SERVER.get_or_init(MongoServer::start)
}

/// A private Redis Cluster: `masters` masters, each with `replicas`
/// replicas, every node a `redis-server --cluster-enabled yes` on a free
/// port of 127.0.0.1 (its cluster bus on the port + 10000), joined by
/// `redis-cli --cluster create`. Every node is killed on drop.
pub struct RedisCluster {
    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,...`
    pub url: String,
    nodes: Vec<(u16, Watched)>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok` with every slot assigned. A failed master
    /// is replaced by its replica after 2 s (`cluster-node-timeout`).
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let program = std::env::var_os("REDIS_SERVER")
            .map(PathBuf::from)
            .or_else(|| on_path("redis-server"))
            .unwrap_or_else(|| panic!("redis-server not found: run `make test`, which installs it"));
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        while nodes.len() < total {
            let port = free_cluster_port();
            let dir = temp_dir("vh-redis-cluster-");
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &dir.join("nodes.conf").to_string_lossy(),
                "--cluster-node-timeout",
                "2000",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let proc = Watched::spawn(&program, &args, dir);
            match proc.wait_ready("redis-server (cluster node)", Duration::from_secs(10), || redis_pings(port)) {
                Ok(()) => nodes.push((port, proc)),
                Err(e) => eprintln!("retrying a cluster node: {e}"),
            }
        }
        let mut create = Command::new(on_path("redis-cli").unwrap_or_else(|| PathBuf::from("redis-cli")));
        create.arg("--cluster").arg("create");
        for (port, _) in &nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.arg("--cluster-replicas").arg(replicas.to_string()).arg("--cluster-yes");
        let out = create.output().expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let url = format!(
            "redis+cluster://{}",
            nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
        );
        let cluster = RedisCluster { url, nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok`, every slot
    /// assigned and every other node known.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let total = self.nodes.len();
        loop {
            let ok = self.nodes.iter().filter(|(_, n)| n.alive()).all(|(port, _)| {
                let info = cli(*port, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_assigned:16384")
                    && info.contains(&format!("cluster_known_nodes:{total}"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster is not ok after {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `n` live nodes are masters (after a failover: a replica
    /// promoted) and every live node reports `cluster_state:ok` again.
    pub fn wait_masters(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.master_ports().len() != n {
            assert!(Instant::now() < deadline, "not {n} masters after {timeout:?}: {:?}", self.master_ports());
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            let ok = self
                .nodes
                .iter()
                .filter(|(_, node)| node.alive())
                .all(|(port, _)| cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster is not ok after {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the master on `port` and promotes its replica at once
    /// (`CLUSTER FAILOVER TAKEOVER` on it: no wait for failure detection);
    /// returns the replica's port.
    pub fn kill_master(&self, port: u16) -> u16 {
        let id = cli(port, &["CLUSTER", "MYID"]).trim().to_string();
        let nodes = cli(port, &["CLUSTER", "NODES"]);
        let replica = nodes
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == id)
            .and_then(|f| f[1].split('@').next()?.rsplit(':').next()?.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no replica of {port} ({id}) in:\n{nodes}"));
        self.signal(port, "KILL");
        let answer = cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
        assert!(answer.contains("OK"), "CLUSTER FAILOVER TAKEOVER on {replica}: {answer}");
        replica
    }

    /// Every node's port, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    /// The ports of the nodes that are masters now (as the live nodes see it).
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(p, n)| n.alive() && cli(*p, &["ROLE"]).lines().next() == Some("master"))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Sends `signal` ("STOP", "CONT", "KILL") to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let (_, node) = self.nodes.iter().find(|(p, _)| *p == port).expect("a node of this cluster");
        node.signal(signal);
    }

    /// Runs `redis-cli -p <port> <args>` on one node; its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }
}

/// `redis-cli -p <port> <args...>`'s output ("" if it could not run).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).replace('\r', ""))
        .unwrap_or_default()
}

/// A port free on 127.0.0.1 whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = 20_000 + (rand::random::<u16>() % 25_000);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// The 3-master Redis Cluster shared by this test binary.
pub fn redis_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(3, 0))
}
