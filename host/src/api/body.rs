//! Reading `POST /jobs` bodies: content type, size, JSON, shape, depth. Every
//! refusal names the field or the rule.

use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;

use super::error::ApiError;

/// A submit as parsed from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitBody {
    pub vendor: String,
    /// `data` as compact JSON text.
    pub data: String,
}

/// `application/json`, with or without parameters (`; charset=utf-8`), or
/// any `+json` type.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json (got {:?})", if ct.is_empty() { "none" } else { ct }),
        ))
    }
}

/// The nesting depth of a JSON text, counted on the bytes (before parsing, so
/// a hostile 10,000-level document costs one pass and no recursion).
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses a submit body: a JSON object with a string `vendor` and any `data`.
/// `max_depth` bounds nesting of the whole body (so `data` gets one less).
pub fn parse_submit(bytes: &[u8], max_depth: usize) -> Result<SubmitBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid_json", "the request body is empty; expected a JSON object"));
    }
    let depth = json_depth(bytes);
    if depth > max_depth {
        return Err(ApiError::bad_request(
            "too_deep",
            format!("field `data`: JSON nested {depth} levels deep; at most {} levels are accepted", max_depth.saturating_sub(1)),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad_request("invalid_body", format!("the request body must be a JSON object, not {}", kind(&value))));
    };
    let vendor = match obj.remove("vendor") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("missing_field", "field `vendor` is required")),
        Some(Value::String(s)) if s.trim().is_empty() => return Err(ApiError::bad_request("invalid_field", "field `vendor` must not be empty")),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => return Err(ApiError::bad_request("invalid_field", format!("field `vendor` must be a string, not {}", kind(&other)))),
    };
    let data = match obj.remove("data") {
        None => return Err(ApiError::bad_request("missing_field", "field `data` is required (any JSON value)")),
        Some(v) => serde_json::to_string(&v).map_err(|e| ApiError::bad_request("invalid_field", format!("field `data`: {e}")))?,
    };
    Ok(SubmitBody { vendor, data })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_seed_body_parses() {
        let b = parse_submit(br#"{"vendor": "sync", "data": "test"}"#, 64).unwrap();
        assert_eq!(b, SubmitBody { vendor: "sync".into(), data: "\"test\"".into() });
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "invalid_json"),
            (b"[1,2]", "invalid_body"),
            (br#"{"data": 1}"#, "missing_field"),
            (br#"{"vendor": "sync"}"#, "missing_field"),
            (br#"{"vendor": 5, "data": 1}"#, "invalid_field"),
            (b"\xff\xfe", "invalid_json"),
            (br#"{"vendor": "sync", "data": 1e400}"#, "invalid_json"),
        ];
        for (body, code) in cases {
            let e = parse_submit(body, 64).unwrap_err();
            assert_eq!(e.code, *code, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let deep = format!(r#"{{"vendor": "sync", "data": {}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_submit(deep.as_bytes(), 64).unwrap_err().code, "too_deep");
        assert_eq!(json_depth(br#"{"a": "[[[[", "b": [1]}"#), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_submit(&bytes, 64);
        }

        #[test]
        fn any_string_data_round_trips(vendor in "[a-z]{1,10}", data in ".*") {
            let body = serde_json::json!({"vendor": vendor, "data": data}).to_string();
            let parsed = parse_submit(body.as_bytes(), 64).unwrap();
            prop_assert_eq!(parsed.vendor, vendor);
            prop_assert_eq!(serde_json::from_str::<Value>(&parsed.data).unwrap(), Value::String(data));
        }
    }
}
