//! Properties of the webhook verifier and the result cleaner.

use proptest::prelude::*;
use serde_json::Value;
use vendorhost::clean::Cleaner;
use vendorhost::webhook::{self, Secret, sign};

use super::now_secs;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever arrives in the three headers, only a real signature passes.
    #[test]
    fn garbage_headers_never_verify(id in ".{0,40}", ts in ".{0,24}", sig in ".{0,120}", body in prop::collection::vec(any::<u8>(), 0..64)) {
        let (secret, _) = Secret::generate();
        let r = webhook::verify(&[secret], Some(&id), Some(&ts), Some(&sig), &body, now_secs(), webhook::DEFAULT_TOLERANCE);
        prop_assert!(r.is_err());
    }

    /// Timestamps at any distance, up to the extremes of i64, are judged
    /// without overflow: inside the tolerance verifies, outside is stale.
    #[test]
    fn timestamps_anywhere_are_judged_without_overflow(ts in any::<i64>(), now in any::<i64>()) {
        let (secret, _) = Secret::generate();
        let sig = sign(&secret, "m", ts, b"x");
        let r = webhook::verify(&[secret], Some("m"), Some(&ts.to_string()), Some(&sig), b"x", now, webhook::DEFAULT_TOLERANCE);
        if now.abs_diff(ts) <= webhook::DEFAULT_TOLERANCE.as_secs() {
            prop_assert!(r.is_ok());
        } else {
            prop_assert_eq!(r, Err(webhook::WebhookError::Stale));
        }
    }

    /// The cleaner drops exactly the keys holding a listed word (any case,
    /// padded, plural) and trims exactly the strings and keys; everything
    /// else survives.
    #[test]
    fn the_cleaner_changes_nothing_but_pii_and_padding(v in arb_json()) {
        let c = Cleaner::with_keys(&["email", "ssn"]);
        let mut cleaned = v.clone();
        c.clean(&mut cleaned);
        prop_assert_eq!(&cleaned, &reference_clean(&v));
        let text = c.clean_text(&v.to_string()).text;
        prop_assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), cleaned);
    }

    /// Any text a vendor returns becomes valid JSON.
    #[test]
    fn clean_text_always_yields_json(text in ".{0,200}") {
        let out = Cleaner::with_keys(&["email"]).clean_text(&text).text;
        prop_assert!(serde_json::from_str::<Value>(&out).is_ok(), "{}", out);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[ \\ta-z\\n]{0,8}".prop_map(Value::String)
    ];
    let key = prop_oneof![
        Just("email".to_string()),
        Just(" EMAIL ".to_string()),
        Just("Ssn".to_string()),
        Just("emails".to_string()),
        Just("emailed".to_string()),
        Just("owner ssn".to_string()),
        "[a-z ]{0,6}"
    ];
    leaf.prop_recursive(6, 48, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A key is personal data when one of its words is a listed one or its
/// plural; kept keys are trimmed (of two equal once trimmed, the later wins).
fn reference_clean(v: &Value) -> Value {
    let pii = |k: &str| {
        k.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| ["email", "emails", "ssn", "ssns"].contains(&w.to_ascii_lowercase().as_str()))
    };
    match v {
        Value::String(s) => Value::String(s.trim().to_string()),
        Value::Array(a) => Value::Array(a.iter().map(reference_clean).collect()),
        Value::Object(o) => {
            let mut out = serde_json::Map::new();
            for (k, x) in o.iter().filter(|(k, _)| !pii(k)) {
                out.insert(k.trim().to_string(), reference_clean(x));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}
