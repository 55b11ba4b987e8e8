//! The floor must carry a job the way the service does, or `make bench`'s
//! ratio to it means nothing: `POST /jobs` answers 202 with a `request_id`,
//! the job ends `complete` with the vendor's record as its result, and
//! `GET /jobs/{id}` stamps `updated_at` as the load generator reads it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Floor(Child);

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary Cargo built beside this test (`target/<profile>/`). Not
/// `env!("CARGO_BIN_EXE_vendorhost-floor")`: built under the lint wrapper
/// (`scripts/clippy-rustc.sh`), this test found it undefined.
fn floor_bin() -> std::path::PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("vendorhost-floor")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_job_is_accepted_called_and_shown_complete_with_its_record() {
    let port = free_port();
    let _floor = Floor(
        Command::new(floor_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/readyz")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the floor did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let bad = http.post(format!("{base}/jobs")).body("{").header("content-type", "application/json").send().await;
    assert_eq!(bad.unwrap().status(), 400);

    let r = http.post(format!("{base}/jobs")).json(&json!({"vendor": "sync", "data": "Ada"})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["request_id"].as_str().unwrap().to_string();
    let job = loop {
        let job: Value = http.get(format!("{base}/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if job["status"] == "complete" {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still {job} after 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(job["request_id"], id.as_str());
    assert_eq!(job["result"]["request_id"], id.as_str());
    assert_eq!(job["result"]["record"]["query"], "  Ada  ");
    let stamp = job["updated_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(stamp).is_ok(), "updated_at {stamp:?} is not RFC 3339");
    assert_eq!(http.get(format!("{base}/jobs/nope")).send().await.unwrap().status(), 404);
}
