//! Cleaning: one policy for every path a result takes (sync answers and
//! webhooks alike). Strings are trimmed at any depth; keys naming personal
//! data are dropped at any depth, case-insensitively.

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Cleaner {
    /// Lowercased PII key names.
    pii: Vec<String>,
}

impl Cleaner {
    pub fn new<S: AsRef<str>>(pii_keys: &[S]) -> Cleaner {
        Cleaner { pii: pii_keys.iter().map(|k| k.as_ref().to_ascii_lowercase()).collect() }
    }

    fn is_pii(&self, key: &str) -> bool {
        let k = key.trim();
        self.pii.iter().any(|p| p.eq_ignore_ascii_case(k))
    }

    /// Cleans a value in place.
    pub fn clean(&self, v: &mut Value) {
        // Iterative, so a deeply nested vendor answer cannot overflow the stack.
        let mut stack: Vec<&mut Value> = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => {
                    let t = s.trim();
                    if t.len() != s.len() {
                        *s = t.to_string();
                    }
                }
                Value::Array(a) => stack.extend(a.iter_mut()),
                Value::Object(o) => {
                    o.retain(|k, _| !self.is_pii(k));
                    stack.extend(o.values_mut());
                }
                _ => {}
            }
        }
    }

    /// Cleans JSON text; text that is not JSON is kept as a trimmed JSON string.
    pub fn clean_text(&self, text: &str) -> String {
        match serde_json::from_str::<Value>(text) {
            Ok(mut v) => {
                self.clean(&mut v);
                serde_json::to_string(&v).unwrap_or_else(|_| "null".into())
            }
            Err(_) => Value::String(text.trim().to_string()).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cleaner() -> Cleaner {
        Cleaner::new(&["email", "phone", "ssn"])
    }

    #[test]
    fn trims_and_drops_at_any_depth() {
        let mut v = json!({
            "name": "  Ada ", "Email": "a@b.c",
            "address": {"city": " London ", "contact": {"PHONE": "1", "note": " keep "}},
            "tags": [" a ", {"ssn": "x", "k": " v "}], "n": 3
        });
        cleaner().clean(&mut v);
        assert_eq!(
            v,
            json!({"name": "Ada", "address": {"city": "London", "contact": {"note": "keep"}}, "tags": ["a", {"k": "v"}], "n": 3})
        );
    }

    #[test]
    fn non_json_text_becomes_a_trimmed_string() {
        assert_eq!(cleaner().clean_text("  hi "), "\"hi\"");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[ a-zA-Z]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![Just("email".to_string()), Just("Phone".to_string()), "[a-z]{1,6}"],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn dirty(v: &Value, c: &Cleaner) -> bool {
        match v {
            Value::String(s) => s.trim() != s,
            Value::Array(a) => a.iter().any(|x| dirty(x, c)),
            Value::Object(o) => o.iter().any(|(k, x)| c.is_pii(k) || dirty(x, c)),
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn cleaned_values_have_no_pii_or_padding_and_cleaning_is_idempotent(v in arb_json()) {
            let c = cleaner();
            let mut once = v.clone();
            c.clean(&mut once);
            prop_assert!(!dirty(&once, &c));
            let mut twice = once.clone();
            c.clean(&mut twice);
            prop_assert_eq!(once, twice);
        }
    }
}
