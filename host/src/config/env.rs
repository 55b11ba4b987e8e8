//! The `VENDORHOST_*` layer. figment's own `Env` provider reads a value with
//! a small grammar of its own, in which a number is a float only if it
//! contains a `.`: `1e3`, `inf` and `nan` stay text, and text is refused
//! where a float is expected. Here a value is read as the config file would
//! read it (TOML), and only what TOML refuses (`5s`, `redis://…`, bare-word
//! lists) falls back to figment's reading. Each variable is its own layer,
//! named after it, so an error can point at the variable.

use figment::util::nest;
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

const PREFIX: &str = "VENDORHOST_";

/// The process environment (names and values read lossily, as figment does).
pub(super) fn process_env() -> Vec<(String, String)> {
    std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())).collect()
}

/// One `VENDORHOST_*` variable as a configuration layer.
pub(super) struct EnvVar {
    name: String,
    /// The key path: prefix dropped, `__` → `.`, lowercase.
    path: String,
    value: Value,
}

/// The layers of the `VENDORHOST_*` variables in `env` (case-insensitive
/// prefix), but those named in `not_keys`, in a fixed order.
pub(super) fn layers<K, V>(env: impl IntoIterator<Item = (K, V)>, not_keys: &[&str]) -> Vec<EnvVar>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut out: Vec<EnvVar> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.as_ref().trim();
            let rest =
                name.get(..PREFIX.len()).filter(|p| p.eq_ignore_ascii_case(PREFIX)).map(|_| &name[PREFIX.len()..])?;
            if not_keys.iter().any(|n| rest.eq_ignore_ascii_case(n)) {
                return None;
            }
            let path = rest.replace("__", ".").to_ascii_lowercase();
            if path.split('.').any(str::is_empty) {
                return None;
            }
            Some(EnvVar { name: name.to_string(), path, value: read_value(v.as_ref()) })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// An environment value as the file would read it, else as figment reads it.
pub(super) fn read_value(raw: &str) -> Value {
    if let Ok(v) = raw.parse::<toml::Value>()
        && let Some(v) = from_toml(v)
    {
        return v;
    }
    match raw.parse::<Value>() {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// A TOML value as a figment value; None for a date-time (kept as text).
fn from_toml(v: toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => f.into(),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(_) => return None,
        toml::Value::Array(items) => items.into_iter().map(from_toml).collect::<Option<Vec<Value>>>()?.into(),
        toml::Value::Table(t) => t.into_iter().map(|(k, v)| Some((k, from_toml(v)?))).collect::<Option<Dict>>()?.into(),
    })
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        match nest(&self.path, self.value.clone()) {
            Value::Dict(_, dict) => Ok(Profile::Default.collect(dict)),
            _ => Err(figment::Error::from(format!("environment variable {}: not a configuration key", self.name))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_the_file_would() {
        let num = |raw: &str| read_value(raw).deserialize::<f64>().ok();
        let text = |raw: &str| read_value(raw).deserialize::<String>().ok();
        assert_eq!(num("1e3"), Some(1000.0));
        assert_eq!(num("1.5"), Some(1.5));
        assert_eq!(num("-2"), Some(-2.0));
        assert_eq!(num("1_000"), Some(1000.0));
        assert!(num("nan").is_some_and(f64::is_nan));
        assert_eq!(num("inf"), Some(f64::INFINITY));
        assert_eq!(read_value("true").deserialize::<bool>().ok(), Some(true));
        for t in ["5s", "250ms", "sqlite", "redis://127.0.0.1:6379/0", "0.0.0.0:8000", "1979-05-27", ""] {
            assert_eq!(text(t).as_deref(), Some(t), "{t:?} should stay text");
        }
        assert_eq!(text("\"1e3\"").as_deref(), Some("1e3"), "a quoted value is text");
        let list = read_value("[a.example, \"b.example\"]").deserialize::<Vec<String>>().ok();
        assert_eq!(list, Some(vec!["a.example".to_string(), "b.example".to_string()]), "bare-word lists still read");
        // A value, not a document (a `[...]` line would be a table header).
        let hosts = read_value("[\"127.0.0.1:8080\"]").deserialize::<Vec<String>>().ok();
        assert_eq!(hosts, Some(vec!["127.0.0.1:8080".to_string()]), "a quoted list reads as a list");
        let keys = read_value("{\"k1\" = \"acme\"}").deserialize::<std::collections::BTreeMap<String, String>>().ok();
        assert_eq!(keys, Some([("k1".to_string(), "acme".to_string())].into()), "an inline table reads as a map");
    }

    #[test]
    fn prefix_split_lowercase_and_skips() {
        let env = [
            ("VENDORHOST_VENDORS__TEST-ECHO__RATE", "2"),
            ("vendorhost_workers", "3"),
            ("VENDORHOST_LOG", "debug"),
            ("VENDORHOST_BAD____KEY", "1"),
            ("OTHER_WORKERS", "4"),
        ];
        let paths: Vec<_> = layers(env, &["LOG"]).into_iter().map(|l| (l.name, l.path)).collect();
        assert_eq!(
            paths,
            [
                ("VENDORHOST_VENDORS__TEST-ECHO__RATE".to_string(), "vendors.test-echo.rate".to_string()),
                ("vendorhost_workers".to_string(), "workers".to_string()),
            ]
        );
    }
}
