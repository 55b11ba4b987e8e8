//! The record both mocks return: derived from the request, and deliberately
//! untidy (padded strings, a duplicate e-mail key in another case, a nested
//! note) so the host's cleaning step has visible work to do.

use serde_json::{Value, json};

/// The untidy record for a request's `data`.
pub(super) fn untidy(data: &Value) -> Value {
    let query = match data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // Deterministic, so tests and demos can predict it.
    let score = query.chars().count() as f64 / 10.0;
    json!({
        "query": format!("  {query}  "),
        "name": "  Ada Lovelace ",
        "email": "ada@example.com",
        "phone": "+1 555 0100",
        "address": {
            "city": " London ",
            "contact": { "Email": "x@y.z", "note": " keep me " }
        },
        "tags": [" a ", "b "],
        "score": score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_used_as_is_and_other_json_is_serialised() {
        assert_eq!(untidy(&json!("abc"))["query"], "  abc  ");
        assert_eq!(untidy(&json!({"a": 1}))["query"], r#"  {"a":1}  "#);
        assert_eq!(untidy(&json!("abcdefghij"))["score"], 1.0);
        assert_eq!(untidy(&json!("abc")), untidy(&json!("abc")));
    }
}
