//! Configuration cannot panic or stall the service: every duration, rate,
//! size and count out of its range is refused, naming the key, where the
//! value came from and the allowed range, whether it comes from the file,
//! from the environment or from a reload (which then keeps the old
//! settings); environment values read as the file would (`1e3`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vendorhost::config::{Config, ConfigError, Overrides};

use crate::support::app::Proc;

/// One bad value: its key, the file text that sets it, the environment
/// variable that sets it, and a piece of the message expected.
struct Case {
    key: &'static str,
    file: String,
    env: (String, String),
    want: &'static str,
}

/// `key = value` in the file (under `[table]` for a dotted key) and as
/// `VENDORHOST_<KEY>` with `__` nesting.
fn case(key: &'static str, toml_value: &str, env_value: &str, want: &'static str) -> Case {
    let (file, env_name) = match key.rsplit_once('.') {
        Some((table, field)) => (format!("[{table}]\n{field} = {toml_value}\n"), key.replace('.', "__")),
        None => (format!("{key} = {toml_value}\n"), key.to_string()),
    };
    Case { key, file, env: (format!("VENDORHOST_{}", env_name.to_uppercase()), env_value.into()), want }
}

const DURATION_100MS: &str = "100ms to 3650d";

fn cases() -> Vec<Case> {
    let d = |key, min_range| case(key, "\"0s\"", "0s", min_range);
    vec![
        case("workers", "0", "0", "1 to 10000"),
        case("workers", "-1", "-1", "invalid value"),
        d("redis_timeout", "100ms to 10m"),
        case("redis_timeout", "\"11m\"", "11m", "100ms to 10m"),
        case("mongo_write_concern", "\"\"", "", "`majority`, a number of nodes from 1, or a tag set name"),
        d("queue_settings.lease", DURATION_100MS),
        case("queue_settings.lease", "\"50ms\"", "50ms", DURATION_100MS),
        case("queue_settings.lease", "\"-5s\"", "-5s", "invalid duration"),
        case("queue_settings.lease", "-5", "-5", "cannot be negative"),
        case("queue_settings.max_deliveries", "0", "0", "1 to 1000"),
        d("queue_settings.sweep_after", DURATION_100MS),
        d("queue_settings.sweep_interval", "10ms to 3650d"),
        d("queue_settings.recover_after", DURATION_100MS),
        d("queue_settings.poll", "1ms to 1m"),
        case("queue_settings.poll", "\"2m\"", "2m", "1ms to 1m"),
        case("queue_settings.shutdown_grace", "\"3651d\"", "3651d", "0s to 3650d"),
        case("queue_settings.removed_vendor_grace", "\"3651d\"", "3651d", "0s to 3650d"),
        d("queue_settings.priority_aging", "1ms to 3650d"),
        case("api.max_body_bytes", "0", "0", "1024 to 1073741824"),
        case("api.max_json_depth", "0", "0", "1 to 100"),
        case("api.max_concurrency", "0", "0", "1 to 1000000"),
        d("api.request_timeout", DURATION_100MS),
        d("api.idempotency_ttl", "1s to 3650d"),
        d("api.header_read_timeout", DURATION_100MS),
        d("api.body_read_timeout", DURATION_100MS),
        case("api.max_body_bytes_in_flight", "10", "10", "api.max_body_bytes to"),
        case("api.max_connections_per_ip", "2000000", "2000000", "0 to 1000000"),
        d("api.idle_timeout", DURATION_100MS),
        d("api.max_connection_age", "1s to 3650d"),
        case("api.max_wait", "\"61m\"", "61m", "0s to 1h"),
        d("notify.max_age", "1s to 3650d"),
        d("notify.backoff_base", "1ms to 3650d"),
        d("notify.backoff_max", "1ms to 3650d"),
        case("notify.timeout", "\"11m\"", "11m", "100ms to 10m"),
        Case {
            key: "auth.keys.bob",
            file: "[auth.keys.bob]\nnotify_allow_private = true\n".into(),
            env: ("VENDORHOST_AUTH__KEYS__BOB__NOTIFY_ALLOW_PRIVATE".into(), "true".into()),
            want: "names of keys in `auth.api_keys`",
        },
        Case {
            key: "auth.api_keys",
            file: "[auth.api_keys]\n\"\" = \"alice\"\n".into(),
            env: ("VENDORHOST_AUTH__API_KEYS".into(), "{\"\" = \"alice\"}".into()),
            want: "a blank key",
        },
        Case {
            key: "auth.api_keys",
            file: "[auth.api_keys]\n\"k-secret-1\" = \"\"\n".into(),
            env: ("VENDORHOST_AUTH__API_KEYS".into(), "{\"k-secret-1\" = \" \"}".into()),
            want: "a blank name",
        },
        d("retention.jobs", "1s to 3650d"),
        d("retention.dead_letters", "1s to 3650d"),
        d("retention.webhook_ids", "1s to 3650d"),
        d("retention.purge_interval", "1s to 3650d"),
        case("vendor_defaults.rate", "0", "0", "1e-6 to 1e9"),
        case("vendor_defaults.memory_mb", "0", "0", "1 to 1024"),
        case("vendor_defaults.breaker.failure_rate", "150", "150", "above 0, at most 100"),
        case("vendors.sync.rate", "0", "0", "1e-6 to 1e9"),
        case("vendors.sync.rate", "-1.5", "-1.5", "1e-6 to 1e9"),
        case("vendors.sync.rate", "nan", "nan", "1e-6 to 1e9"),
        case("vendors.sync.rate", "inf", "inf", "1e-6 to 1e9"),
        case("vendors.sync.rate", "1e-7", "1e-7", "1e-6 to 1e9"),
        case("vendors.sync.memory_mb", "0", "0", "1 to 1024"),
        case("vendors.sync.memory_mb", "2048", "2048", "1 to 1024"),
        d("vendors.sync.timeout", "10ms to 3650d"),
        case("vendors.sync.burst", "0", "0", "1 to 1000000"),
        case("vendors.sync.max_in_flight", "0", "0", "1 to 1000000"),
        case("vendors.sync.max_attempts", "0", "0", "1 to 1000"),
        d("vendors.sync.backoff_base", "1ms to 3650d"),
        d("vendors.sync.backoff_max", "1ms to 3650d"),
        d("vendors.sync.max_retry_after", "1ms to 3650d"),
        d("vendors.sync.webhook_deadline", "1s to 3650d"),
        d("vendors.sync.webhook_tolerance", "1s to 3650d"),
        case("vendors.sync.breaker.window", "0", "0", "1 to 10000"),
        case("vendors.sync.breaker.min_calls", "0", "0", "1 to 10000"),
        case("vendors.sync.breaker.half_open_probes", "0", "0", "1 to 10000"),
        case("vendors.sync.breaker.failure_rate", "150", "150", "above 0, at most 100"),
        case("vendors.sync.breaker.failure_rate", "0", "0", "above 0, at most 100"),
        case("vendors.sync.breaker.slow_call_rate", "-1", "-1", "above 0, at most 100"),
        case("vendors.sync.breaker.slow_call_rate", "nan", "nan", "above 0, at most 100"),
        d("vendors.sync.breaker.slow_call", "1ms to 3650d"),
        d("vendors.sync.breaker.open_for", "1ms to 3650d"),
        case("pii_action", "\"mask\"", "mask", "\"redact\" or \"drop\""),
        case("vendors.sync.pii_action", "\"erase\"", "erase", "\"redact\" or \"drop\""),
        case(
            "pii_detectors.fax",
            "false",
            "false",
            "detector names \"email\", \"phone\", \"card\", \"iban\" or \"ssn\"",
        ),
        case("vendors.sync.pii_detectors.phones", "false", "false", "detector names"),
        case("pii_keys_extra", "[\"__\"]", "[\"__\"]", "at least one letter or digit"),
        case("pii_keys", "[\"email\", \" \"]", "[\"email\", \" \"]", "at least one letter or digit"),
        case("vendors.sync.pii_keys_extra", "[\"-\"]", "[\"-\"]", "at least one letter or digit"),
        case("vendors.sync.pii_allow", "[\"record..email\"]", "[\"record..email\"]", "an empty key"),
        case("vendor_defaults.pii_allow", "[\"items[x].phone\"]", "[\"items[x].phone\"]", "paths such as"),
    ]
}

const NO_ENV: [(&str, &str); 0] = [];

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The error of a load that must fail, as one line.
fn refused(r: Result<Config, ConfigError>, what: &str) -> String {
    let msg = match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e.to_string(),
    };
    assert!(!msg.contains('\n'), "{what}: not one line: {msg}");
    msg
}

#[test]
fn every_bad_value_is_refused_from_the_file_the_environment_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", "[vendors.sync]\nrate = 5.0\n");
    let running = Config::load_from(Some(&good), &Overrides::default(), NO_ENV).unwrap();
    let before = serde_json::to_value(&running).unwrap();
    let cases = cases();
    for (i, c) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("bad{i}.toml"), &c.file);
        let file_name = file.file_name().unwrap().to_string_lossy().to_string();
        let key = format!("`{}`", c.key);
        let env = [(c.env.0.as_str(), c.env.1.as_str())];
        let check = |msg: &str, origin: &str, how: &str| {
            assert!(msg.contains(&key), "{how} {}: the message does not name the key: {msg}", c.key);
            assert!(msg.contains(origin), "{how} {}: the message does not name {origin}: {msg}", c.key);
            assert!(msg.contains(c.want), "{how} {}: expected {:?} in: {msg}", c.key, c.want);
            assert!(!msg.contains("k-secret-1"), "{how} {}: the message shows an API key: {msg}", c.key);
        };

        let msg = refused(Config::load_from(Some(&file), &Overrides::default(), NO_ENV), c.key);
        check(&msg, &file_name, "file");
        let msg = refused(Config::load_from(None, &Overrides::default(), env), c.key);
        check(&msg, &c.env.0, "env");

        let msg = refused(running.reload_vendors_from(Some(&file), NO_ENV), c.key);
        check(&msg, &file_name, "reload (file)");
        let msg = refused(running.reload_vendors_from(Some(&good), env), c.key);
        check(&msg, &c.env.0, "reload (env)");
    }
    assert_eq!(serde_json::to_value(&running).unwrap(), before, "a refused reload changed the running settings");

    // The reload path does apply a good change (the refusals above are not
    // a reload that never reads anything).
    let ok = running.reload_vendors_from(Some(&good), [("VENDORHOST_VENDORS__SYNC__RATE", "7")]).unwrap();
    assert_eq!(ok.vendor("sync").rate, Some(7.0), "a good reload applies");
}

/// The edges of each range are allowed, so the ranges are what the README says.
#[test]
fn the_edges_of_each_range_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let text = "workers = 10000\nredis_timeout = \"10m\"\n\
        [queue_settings]\nlease = \"100ms\"\nmax_deliveries = 1\nsweep_after = \"100ms\"\nsweep_interval = \"10ms\"\n\
        recover_after = \"100ms\"\npoll = \"1m\"\nshutdown_grace = 0\nremoved_vendor_grace = \"3650d\"\npartitions = 1024\n\
        priority_aging = \"1ms\"\n\
        [api]\nmax_body_bytes = 1024\nmax_json_depth = 100\nmax_concurrency = 1\nrequest_timeout = \"100ms\"\n\
        idempotency_ttl = \"1s\"\nheader_read_timeout = \"100ms\"\nbody_read_timeout = \"100ms\"\n\
        max_body_bytes_in_flight = 1024\nmax_connections_per_ip = 0\nidle_timeout = \"100ms\"\nmax_connection_age = \"1s\"\n\
        max_wait = \"1h\"\n\
        [auth.api_keys]\nk1 = \"alice\"\n\
        [auth.keys.alice]\nnotify_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nnotify_allow_private = true\n\
        weight = 1000000\n\
        [notify]\nmax_age = \"1s\"\nbackoff_base = 1\nbackoff_max = 1\ntimeout = \"100ms\"\nallow_private = true\n\
        [retention]\njobs = \"1s\"\ndead_letters = \"1s\"\nwebhook_ids = \"1s\"\npurge_interval = \"1s\"\n\
        [vendor_defaults]\nrate = 1e9\n\
        [vendors.sync]\nrate = 1e-6\nmemory_mb = 1024\ntimeout = \"10ms\"\nburst = 1\nmax_in_flight = 1\nmax_attempts = 1000\n\
        backoff_base = 1\nbackoff_max = 1\nmax_retry_after = 1\nwebhook_deadline = \"1s\"\nwebhook_tolerance = \"1s\"\n\
        [vendors.sync.breaker]\nwindow = 1\nmin_calls = 1\nhalf_open_probes = 10000\nfailure_rate = 100\n\
        slow_call_rate = 0.001\nslow_call = 1\nopen_for = 1\n";
    let path = write(dir.path(), "edges.toml", text);
    let cfg = Config::load_from(Some(&path), &Overrides::default(), NO_ENV).unwrap();
    assert_eq!(cfg.queue_settings.lease, Duration::from_millis(100));
    assert_eq!(cfg.vendor("sync").rate, Some(1e-6));
    assert!(Config::default().validate().is_ok(), "a default is out of range: {:?}", Config::default().validate());
}

/// The cleaning settings load, merge per vendor (added keys add up,
/// detector switches merge per detector, the vendor's action and allow list
/// win) and a replacement of the key list is told apart from its absence.
#[test]
fn cleaning_settings_load_and_merge_per_vendor() {
    let dir = tempfile::tempdir().unwrap();
    let text = "pii_keys_extra = [\"badge_no\"]\npii_action = \"drop\"\n[pii_detectors]\nphone = false\n\
        [vendor_defaults]\npii_keys_extra = [\"member_id\"]\npii_detectors = { iban = false }\n\
        pii_allow = [\"record.email_domain\", \"items[*].phone\", \"[\\\"a.b\\\"].c\", \"$.x\", \"$\"]\n\
        [vendors.sync]\npii_keys_extra = [\"loyalty_no\"]\npii_action = \"redact\"\npii_detectors = { iban = true, ssn = false }\n";
    let path = write(dir.path(), "pii.toml", text);
    let cfg = Config::load_from(Some(&path), &Overrides::default(), NO_ENV).unwrap();
    assert_eq!((cfg.pii_keys.as_ref(), cfg.pii_action.as_str()), (None, "drop"));
    assert_eq!(cfg.pii_keys_extra, ["badge_no"]);
    assert_eq!(cfg.pii_detectors.get("phone"), Some(&false));
    let sync = cfg.vendor("sync");
    assert_eq!(sync.pii_keys_extra, Some(vec!["member_id".to_string(), "loyalty_no".to_string()]));
    assert_eq!(sync.pii_action.as_deref(), Some("redact"));
    let detectors = sync.pii_detectors.unwrap_or_default();
    assert_eq!((detectors.get("iban"), detectors.get("ssn")), (Some(&true), Some(&false)));
    assert_eq!(sync.pii_allow.map(|a| a.len()), Some(5));
    let other = cfg.vendor("other");
    assert_eq!((other.pii_keys_extra, other.pii_action), (Some(vec!["member_id".to_string()]), None));

    let env = [("VENDORHOST_PII_KEYS", "[\"email\"]"), ("VENDORHOST_VENDORS__SYNC__PII_ALLOW", "[\"a.email\"]")];
    let cfg = Config::load_from(None, &Overrides::default(), env).unwrap();
    assert_eq!(cfg.pii_keys, Some(vec!["email".to_string()]));
    assert_eq!(cfg.vendor("sync").pii_allow, Some(vec!["a.email".to_string()]));
}

/// A flag is named as the origin of its value.
#[test]
fn a_bad_flag_is_named() {
    let flags = Overrides { workers: Some(0), ..Overrides::default() };
    let msg = refused(Config::load_from(None, &flags, NO_ENV), "--workers 0");
    assert!(msg.contains("`workers`") && msg.contains("command line"), "{msg}");
}

/// Environment values read as the file would read them: `1e3` is a float.
#[test]
fn environment_numbers_read_as_in_the_file() {
    let env = [
        ("VENDORHOST_VENDORS__SYNC__RATE", "1e3"),
        ("VENDORHOST_VENDOR_DEFAULTS__BREAKER__FAILURE_RATE", "5e1"),
        ("VENDORHOST_QUEUE_SETTINGS__LEASE", "1.5e3"),
        ("VENDORHOST_QUEUE_SETTINGS__POLL", "250ms"),
        ("VENDORHOST_API__MAX_CONCURRENCY", "1_000"),
        ("VENDORHOST_QUEUE", "sqlite"),
    ];
    let cfg = Config::load_from(None, &Overrides::default(), env).unwrap();
    assert_eq!(cfg.vendor("sync").rate, Some(1000.0));
    assert_eq!(cfg.vendor_defaults.breaker.as_ref().map(|b| b.failure_rate), Some(50.0));
    assert_eq!(cfg.queue_settings.lease, Duration::from_millis(1500));
    assert_eq!(cfg.queue_settings.poll, Duration::from_millis(250));
    assert_eq!(cfg.api.max_concurrency, 1000);
}

/// Text settings spelled as numbers in the environment stay text: a numeric
/// Redis prefix, admin key, key name, write concern or plugin config value.
#[test]
fn environment_numbers_in_text_settings_stay_text() {
    let env = [
        ("VENDORHOST_REDIS_PREFIX", "123"),
        ("VENDORHOST_MONGO_WRITE_CONCERN", "2"),
        ("VENDORHOST_AUTH__ADMIN_KEY", "20261202"),
        ("VENDORHOST_AUTH__API_KEYS__K1", "42"),
        ("VENDORHOST_VENDORS__SYNC__CONFIG__PAGE_SIZE", "50"),
        ("VENDORHOST_VENDORS__SYNC__CONFIG__STRICT", "true"),
    ];
    let cfg = Config::load_from(None, &Overrides::default(), env).unwrap();
    assert_eq!((cfg.redis_prefix.as_str(), cfg.mongo_write_concern.as_str()), ("123", "2"));
    assert_eq!(cfg.auth.admin_key, "20261202");
    assert_eq!(cfg.auth.api_keys.get("k1").map(String::as_str), Some("42"));
    let config = cfg.vendor("sync").config.unwrap_or_default();
    assert_eq!((config["page_size"].as_str(), config["strict"].as_str()), ("50", "true"));
}

/// `vendorhost serve` with a bad setting exits non-zero, naming the key and
/// where it came from; `1e3` from the real environment is not the problem.
#[test]
fn serve_with_a_bad_setting_exits_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("VENDORHOST_LISTEN", "127.0.0.1:0".to_string()),
            ("VENDORHOST_DATA", dir.path().join("vh.db").display().to_string()),
            ("VENDORHOST_PLUGINS_DIR", dir.path().display().to_string()),
            ("VENDORHOST_MOCKS", "false".to_string()),
            ("VENDORHOST_LOG", "warn".to_string()),
        ];
        env.extend(extra);
        env
    };
    let env =
        base(vec![("VENDORHOST_QUEUE_SETTINGS__LEASE", "0s".into()), ("VENDORHOST_VENDORS__SYNC__RATE", "1e3".into())]);
    let log = exit_log(Proc::spawn(&["serve"], &env, dir.path().join("env.log")));
    assert!(log.contains("`queue_settings.lease`") && log.contains("VENDORHOST_QUEUE_SETTINGS__LEASE"), "{log}");
    assert!(!log.contains("vendors.sync.rate"), "1e3 from the environment was refused: {log}");

    let file = write(dir.path(), "vendorhost.toml", "[vendors.sync.breaker]\nfailure_rate = 150\n");
    let log =
        exit_log(Proc::spawn(&["serve", "--config", file.to_str().unwrap()], &base(vec![]), dir.path().join("f.log")));
    assert!(log.contains("`vendors.sync.breaker.failure_rate`") && log.contains("vendorhost.toml"), "{log}");
}

/// Waits for the process to exit (a running server fails the test) and
/// returns its output, asserting a failure status.
fn exit_log(mut p: Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            let log = p.log_text();
            assert!(!status.success(), "exited 0: {log}");
            return log;
        }
        assert!(Instant::now() < deadline, "still running with a bad setting: {}", p.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}
