//! The queue on a private Redis Cluster of its own (not the shared one, so
//! that nothing else runs on it): a master killed mid-run loses no accepted
//! job, and 16 partitions share the work evenly over 3 masters.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use vendorhost::queue::redis::RedisQueue;
use vendorhost::queue::{Message, Queue};

use crate::support::app::{TestApp, plugins_dir, production_config, test_plugin};
use crate::support::servers::{self, RedisCluster};

/// 3 masters with a replica each; a master is SIGKILLed while jobs flow and
/// its replica takes over (`CLUSTER FAILOVER TAKEOVER`, as an operator or
/// the cluster's own failure detection would).
/// Every job the API accepted (before, during and after) still ends: what
/// the failover dropped (writes the replica had not received, entries of a
/// lost partition) is recovered by the sweeper from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_run_loses_no_accepted_job() {
    let cluster = RedisCluster::start(3, 1);
    let p = plugins_dir(&[test_plugin("echo-v1")]);
    let d = tempfile::tempdir().unwrap();
    let mut cfg = production_config(d.path(), p.path());
    cfg.queue = cluster.url.clone();
    cfg.redis_timeout = Duration::from_secs(1);
    cfg.queue_settings.lease = Duration::from_secs(2);
    cfg.queue_settings.recover_after = Duration::from_secs(1);
    cfg.queue_settings.sweep_interval = Duration::from_millis(200);
    let app = TestApp::start(cfg).await;

    let mut accepted = Vec::new();
    let submit_some = async |n: usize, accepted: &mut Vec<String>| {
        for _ in 0..n {
            let (status, body) = app.post_job(json!({"vendor": "test-echo", "data": {"sleep_ms": 300}})).await;
            if status == 202 {
                accepted.push(body["request_id"].as_str().expect("a request id").to_string());
            }
        }
    };
    submit_some(40, &mut accepted).await;
    assert_eq!(accepted.len(), 40, "every submit before the failover is accepted");

    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let replica = cluster.kill_master(masters[0]);
    submit_some(40, &mut accepted).await;
    cluster.wait_masters(3, Duration::from_secs(30));
    let now_masters = cluster.master_ports();
    assert_eq!(now_masters.len(), 3, "a replica took the dead master's slots: {now_masters:?}");
    assert!(!now_masters.contains(&masters[0]) && now_masters.contains(&replica), "{now_masters:?}");
    submit_some(40, &mut accepted).await;
    assert!(accepted.len() >= 80, "only {} of 120 submits accepted", accepted.len());

    for id in &accepted {
        let job = app.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "complete", "{job}");
    }
    app.stop().await;
}

/// The queue commands one node served, from `INFO commandstats`: stream,
/// sorted-set, set and dead-letter hash commands, also those run inside the
/// queue's scripts (cluster housekeeping and the promoter lock's GET/SET
/// are left out).
fn queue_commands(cluster: &RedisCluster, port: u16) -> u64 {
    let stats = cluster.cli(port, &["INFO", "commandstats"]);
    let queue = ["x", "z", "sadd", "srem", "smismember", "hset", "hget", "hmget", "hdel"];
    stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse::<u64>().ok()?;
            queue.iter().any(|q| name.starts_with(q)).then_some(calls)
        })
        .sum()
}

/// The partitions (hash tags `{<prefix>:pNN...}`) with keys on one node.
fn partitions_on(cluster: &RedisCluster, port: u16, prefix: &str) -> HashSet<String> {
    let keys = cluster.cli(port, &["--scan", "--pattern", &format!("{{{prefix}:p*")]);
    keys.lines().filter_map(|k| Some(k.strip_prefix('{')?.split_once('}')?.0.to_string())).collect()
}

/// 16 partitions on 3 masters: each master holds 4 to 6 of them (the
/// partitions' tags are spread over the slot space), over a drain of 5000
/// jobs by 4 consumers each master serves the share of the queue's commands
/// its partitions make it due (held / 16, within 6 points), and no
/// partition's backlog is ever more than twice the mean (sampled while the mean is at
/// least 100 jobs: at the very end of a drain the partitions that were
/// hashed a few more jobs are the last to empty, and one lease batch is a
/// large fraction of what is left).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_partitions_share_the_work_evenly_over_three_masters() {
    const JOBS: usize = 5000;
    let cluster = RedisCluster::start(3, 0);
    let prefix = servers::unique("vh_balance");
    let q = Arc::new(RedisQueue::connect(&cluster.url, &prefix).await.unwrap());
    assert_eq!(q.partitions(), 16);
    let masters = cluster.master_ports();
    for port in &masters {
        assert!(cluster.cli(*port, &["CONFIG", "RESETSTAT"]).contains("OK"));
    }

    let msgs: Vec<Message> = (0..JOBS).map(|_| Message::new(uuid::Uuid::now_v7().to_string(), "acme")).collect();
    for chunk in msgs.chunks(500) {
        q.enqueue(chunk).await.unwrap();
    }
    // Every partition was hashed jobs (5000 over 16), so each has keys now.
    let held: BTreeMap<u16, usize> = masters.iter().map(|p| (*p, partitions_on(&cluster, *p, &prefix).len())).collect();
    assert_eq!(held.values().sum::<usize>(), 16, "every partition lives on one master: {held:?}");
    assert!(held.values().all(|n| (4..=6).contains(n)), "partitions per master: {held:?}");

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (q, done) = (q.clone(), done.clone());
        tokio::spawn(async move {
            let (mut sampled, mut worst) = (0usize, 0f64);
            while !done.load(Ordering::Relaxed) {
                let backlog = q.backlogs().await.unwrap();
                let mean = backlog.iter().sum::<u64>() as f64 / backlog.len() as f64;
                if mean >= 100.0 {
                    let max = *backlog.iter().max().unwrap_or(&0) as f64;
                    assert!(max <= 2.0 * mean, "a partition holds {max} jobs, the mean is {mean}: {backlog:?}");
                    sampled += 1;
                    worst = worst.max(max / mean);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (sampled, worst)
        })
    };
    let consumers: Vec<_> = (0..4)
        .map(|c| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let got = q.lease(&format!("c{c}"), 20, Duration::from_secs(60), Duration::from_millis(300)).await;
                    let got = got.unwrap();
                    if got.is_empty() {
                        return seen;
                    }
                    for l in got {
                        q.ack(&l).await.unwrap();
                        seen.push(Message::decode(&l.payload).unwrap().request_id);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    let (sampled, worst) = sampler.await.unwrap();
    assert!(sampled >= 3, "only {sampled} backlog samples while the mean was >= 100");
    assert_eq!(all.len(), JOBS);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), JOBS, "a job delivered twice");
    assert_eq!(q.depth().await.unwrap().ready, 0);

    let calls: BTreeMap<u16, u64> = masters.iter().map(|p| (*p, queue_commands(&cluster, *p))).collect();
    let total: u64 = calls.values().sum();
    for (port, n) in &calls {
        let share = *n as f64 / total as f64;
        let due = held[port] as f64 / 16.0;
        assert!(
            (share - due).abs() <= 0.06,
            "master {port} holds {} of 16 partitions and served {:.1} % of {total} commands: {calls:?}",
            held[port],
            share * 100.0
        );
    }
    eprintln!(
        "balance: partitions per master {held:?}, commands {calls:?}; {sampled} backlog samples, worst max/mean {worst:.2}"
    );
}

/// A `redis+cluster://` URL that names no node is refused at start-up, an
/// unknown scheme names the accepted ones, and `partitions` is 1 to 1024.
#[tokio::test]
async fn bad_queue_urls_are_refused_at_start_up() {
    let d = tempfile::tempdir().unwrap();
    let p = plugins_dir(&[test_plugin("echo-v1")]);
    let mut cfg = production_config(d.path(), p.path());
    cfg.queue = "kafka://127.0.0.1:9092".into();
    let err = cfg.validate().expect_err("an unknown scheme").to_string();
    for scheme in ["sqlite", "redis://", "rediss://", "redis+cluster://"] {
        assert!(err.contains(scheme), "{err}");
    }
    cfg.queue = "redis+cluster://".into();
    cfg.validate().unwrap();
    for bad in [0, 1025] {
        cfg.queue_settings.partitions = Some(bad);
        let err = cfg.validate().expect_err("partitions out of range").to_string();
        assert!(err.contains("queue_settings.partitions") && err.contains("1 to 1024"), "{err}");
    }
    cfg.queue_settings.partitions = None;
    let err = vendorhost::redis_conn::RedisConn::connect(&cfg.queue).await.err().expect("no node to connect to");
    assert!(err.to_string().contains("host:port"), "{err}");
}
