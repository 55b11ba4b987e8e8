//! Reading `POST /jobs` bodies: content type, size, JSON, shape, depth. Every
//! refusal names the field or the rule.

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use super::error::ApiError;

/// A submit as parsed from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitBody {
    pub vendor: String,
    /// `data` as JSON text: the client's, less whitespace between tokens.
    pub data: String,
}

/// A body that could not be read: too large (413), or the client broke off.
pub fn rejected(r: BytesRejection, limit: usize) -> ApiError {
    let status = r.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "payload_too_large", format!("the request body exceeds {limit} bytes"))
    } else {
        ApiError::new(status, "bad_body", r.body_text())
    }
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

/// Valid JSON text without the whitespace between tokens.
fn minify(json: &str) -> String {
    let (mut out, mut in_str, mut escaped) = (String::with_capacity(json.len()), false, false);
    for c in json.chars() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Parses a submit body: a JSON object with a string `vendor` and any `data`.
/// `max_depth` bounds nesting of the whole body (so `data` gets one less).
///
/// `data` is kept as the client's own text (only whitespace between tokens
/// goes), never parsed into numbers: an integer of any size or a float with
/// any number of digits reaches the vendor exactly as sent, and the same body
/// always hashes the same for Idempotency-Key.
pub fn parse_submit(bytes: &[u8], max_depth: usize) -> Result<SubmitBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid_json", "the request body is empty; expected a JSON object"));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the request body is not valid UTF-8 (JSON must be): {e}"))
    })?;
    let depth = json_depth(bytes);
    if depth > max_depth {
        return Err(ApiError::bad_request(
            "too_deep",
            format!(
                "field `data`: JSON nested {depth} levels deep; at most {} levels are accepted",
                max_depth.saturating_sub(1)
            ),
        ));
    }
    // Validates the whole document without building it.
    let whole: &RawValue = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    if !whole.get().starts_with('{') {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("the request body must be a JSON object, not {}", kind(whole)),
        ));
    }
    let mut fields: BTreeMap<String, &RawValue> = serde_json::from_str(whole.get())
        .map_err(|e| ApiError::bad_request("invalid_body", format!("the request body: {e}")))?;
    let vendor = match fields.remove("vendor") {
        None => return Err(ApiError::bad_request("missing_field", "field `vendor` is required")),
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => return Err(ApiError::bad_request("missing_field", "field `vendor` is required")),
            Ok(Value::String(s)) if s.trim().is_empty() => {
                return Err(ApiError::bad_request("invalid_field", "field `vendor` must not be empty"));
            }
            Ok(Value::String(s)) => s.trim().to_string(),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!("field `vendor` must be a string, not {}", kind(raw)),
                ));
            }
        },
    };
    let data = match fields.remove("data") {
        None => return Err(ApiError::bad_request("missing_field", "field `data` is required (any JSON value)")),
        Some(raw) => minify(raw.get()),
    };
    Ok(SubmitBody { vendor, data })
}

/// What a (valid) JSON text is, from its first byte.
fn kind(v: &RawValue) -> &'static str {
    match v.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
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
            (b"{\"vendor\": \"sync\", \"data\": \"\xc3\x28\"}", "invalid_json"),
            (br#"{"vendor": "sync", "data": 01}"#, "invalid_json"),
            (br#"{"vendor": "sync", "data": 1} x"#, "invalid_json"),
            (br#""sync""#, "invalid_body"),
            (b"null", "invalid_body"),
            (br#"{"vendor": null, "data": 1}"#, "missing_field"),
            (br#"{"vendor": " ", "data": 1}"#, "invalid_field"),
            (br#"{"vendor": ["sync"], "data": 1}"#, "invalid_field"),
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

    #[test]
    fn numbers_of_any_size_pass_through_exactly() {
        let cases = [
            "123456789012345678901234567890",
            "-18446744073709551616",
            "1e400",
            "-6.362591595014928e+260",
            "0.1000000000000000055511151231257827",
            "[1.0,-0,2E-5]",
        ];
        for n in cases {
            let body = format!(r#"{{"vendor": "sync", "data": {n}}}"#);
            assert_eq!(parse_submit(body.as_bytes(), 64).unwrap().data, n);
        }
        let spaced = parse_submit(b"{\"vendor\":\"sync\",\"data\":\r\n { \"a\" :\t[ 1 , \" x  y \" ] } }", 64).unwrap();
        assert_eq!(spaced.data, r#"{"a":[1," x  y "]}"#);
        assert_eq!(parse_submit(br#"{"vendor": "sync", "data": null}"#, 64).unwrap().data, "null");
    }

    /// Nested arrays/objects whose strings hold brackets, quotes and escapes.
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            r#"[\[\]{}"\\a-z ]{0,8}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(12, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(r#"[\[{"a-z]{0,4}"#, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_byte_scan_measures_depth_like_the_parser(v in arb_json()) {
            prop_assert_eq!(json_depth(v.to_string().as_bytes()), depth(&v));
            prop_assert_eq!(json_depth(serde_json::to_string_pretty(&v).unwrap().as_bytes()), depth(&v));
        }

        #[test]
        fn any_json_data_round_trips_or_is_refused_for_depth(v in arb_json()) {
            let body = serde_json::json!({"vendor": "x", "data": v}).to_string();
            let pretty = serde_json::to_string_pretty(&serde_json::json!({"vendor": "x", "data": v})).unwrap();
            match parse_submit(body.as_bytes(), 8) {
                Ok(parsed) => {
                    prop_assert!(depth(&v) < 8);
                    // The client's text, and whitespace does not change it.
                    prop_assert_eq!(&parsed.data, &v.to_string());
                    prop_assert_eq!(parse_submit(pretty.as_bytes(), 8).unwrap(), parsed);
                }
                Err(e) => {
                    prop_assert_eq!(e.code, "too_deep");
                    prop_assert!(depth(&v) >= 8);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_prefix_never_panic(tail in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut body = br#"{"vendor": "sync", "data": "#.to_vec();
            body.extend(tail);
            let _ = parse_submit(&body, 64);
        }

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
