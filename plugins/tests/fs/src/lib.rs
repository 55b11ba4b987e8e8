//! Test plugin that reaches for what WASI would give an unconfined program:
//! a file, the environment, its arguments, a TCP connection, the clock and
//! random bytes. The host links WASI with nothing granted, so the first four
//! fail (or are empty) and the last two work. `fetch` reports each as JSON;
//! the job's data is the TCP port to try on 127.0.0.1 (a number).

use vendorhost_plugin::{FetchOutcome, Job, Mode, Vendor, VendorError, VendorInfo, json_string};

struct Plugin;

vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    fn info() -> VendorInfo {
        VendorInfo::new("test-fs", "Test plugin test-fs", Mode::Sync).version("0.1.0").limits(50.0, 20, 5000)
    }

    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        let file = match std::fs::read_to_string("/etc/hostname") {
            Ok(text) => format!("read {} bytes", text.len()),
            Err(e) => format!("error: {e}"),
        };
        let dir = match std::fs::read_dir(".") {
            Ok(_) => "listed".to_string(),
            Err(e) => format!("error: {e}"),
        };
        let port: u16 = job.data.trim().parse().unwrap_or(1);
        let socket = match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) => "connected".to_string(),
            Err(e) => format!("error: {e}"),
        };
        let clock =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        // A HashMap's seed comes from wasi:random.
        let seeded: std::collections::HashMap<u8, u8> = [(1, 2)].into_iter().collect();
        Ok(FetchOutcome::Complete(format!(
            r#"{{"file":{},"dir":{},"env":{},"args":{},"socket":{},"clock_secs":{},"random":{}}}"#,
            json_string(&file),
            json_string(&dir),
            std::env::vars().count(),
            std::env::args().count(),
            json_string(&socket),
            clock,
            seeded.len()
        )))
    }
}
