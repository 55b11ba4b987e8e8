//! Parsing JSON request bodies: the content type, valid UTF-8 JSON, no
//! repeated key at any depth, the nesting depth (counted on the bytes), and
//! the shape of `POST /jobs` and `POST /jobs/batch` bodies. Every refusal is
//! an `ApiError` naming the field or the rule.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::ApiError;
use crate::model::Priority;

/// A submit as parsed from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitBody {
    pub vendor: String,
    /// `data` as JSON text: the client's, less whitespace between tokens.
    pub data: String,
    /// Where to POST the job once finished (checked by the job service).
    pub notify_url: Option<String>,
    /// Its priority within the key's share (`normal` when absent).
    pub priority: Priority,
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
    let (_, mut fields) = json_object(bytes, "", max_depth, None, |depth| {
        format!(
            "field `data`: JSON nested {depth} levels deep; at most {} levels are accepted",
            max_depth.saturating_sub(1)
        )
    })?;
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
    let notify_url = match fields.remove("notify_url") {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => None,
            Ok(Value::String(s)) => Some(s),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!("field `notify_url` must be a string (an http or https URL), not {}", kind(raw)),
                ));
            }
        },
    };
    let priority = match fields.remove("priority") {
        None => Priority::Normal,
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => Priority::Normal,
            Ok(Value::String(s)) if Priority::parse(&s).is_some() => Priority::parse(&s).unwrap_or_default(),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!("field `priority` must be \"high\", \"normal\" or \"low\", not {}", shorten(raw.get(), 40)),
                ));
            }
        },
    };
    Ok(SubmitBody { vendor, data, notify_url, priority })
}

/// Most submits in one `POST /jobs/batch`.
pub const MAX_BATCH: usize = 1000;

/// A batch submit as parsed: each item a submit or why it is not one (in
/// order), and the batch's canonical text (for its Idempotency-Key).
#[derive(Debug)]
pub struct BatchBody {
    pub items: Vec<Result<SubmitBody, ApiError>>,
    pub canonical: String,
}

/// Parses `{"jobs": [<submit body>, ...]}` (1 to `MAX_BATCH` items). The
/// batch as a whole must be valid JSON with a `jobs` array; each item is
/// checked as `parse_submit` checks a body, and a bad item fails alone.
pub fn parse_batch(bytes: &[u8], max_depth: usize) -> Result<BatchBody, ApiError> {
    // `{"jobs": [ <item> ]}`: two levels above each item's own.
    let (whole, mut fields) = json_object(bytes, " {\"jobs\": [...]}", max_depth + 2, Some("jobs["), |depth| {
        format!(
            "field `jobs`: JSON nested {depth} levels deep; an item's `data` may nest at most {} levels",
            max_depth.saturating_sub(1)
        )
    })?;
    let jobs =
        fields.remove("jobs").ok_or_else(|| ApiError::bad_request("missing_field", "field `jobs` is required"))?;
    let items: Vec<&RawValue> = serde_json::from_str(jobs.get()).map_err(|_| {
        ApiError::bad_request("invalid_field", format!("field `jobs` must be an array of submits, not {}", kind(jobs)))
    })?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("field `jobs` must hold 1 to {MAX_BATCH} submits (it holds {})", items.len()),
        ));
    }
    let items = items.into_iter().map(|item| parse_submit(item.get().as_bytes(), max_depth)).collect();
    Ok(BatchBody { items, canonical: minify(whole.get()) })
}

/// The checks every JSON body takes before its fields are read, in this
/// order: not empty, UTF-8, nested at most `max_depth` levels (counted on the
/// bytes, before any parsing; `too_deep` words the refusal), valid JSON
/// (validated without building it), an object, and no key repeated within
/// one object, except under `items` (a path prefix whose items are checked
/// one by one later). `shape` follows "a JSON object" in refusals. Returns
/// the whole document and its top-level fields.
fn json_object<'a>(
    bytes: &'a [u8],
    shape: &str,
    max_depth: usize,
    items: Option<&str>,
    too_deep: impl FnOnce(usize) -> String,
) -> Result<(&'a RawValue, BTreeMap<String, &'a RawValue>), ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            format!("the request body is empty; expected a JSON object{shape}"),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the request body is not valid UTF-8 (JSON must be): {e}"))
    })?;
    let depth = json_depth(bytes);
    if depth > max_depth {
        return Err(ApiError::bad_request("too_deep", too_deep(depth)));
    }
    let whole: &RawValue = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    if !whole.get().starts_with('{') {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("the request body must be a JSON object{shape}, not {}", kind(whole)),
        ));
    }
    if let Some(path) = duplicate_key(whole.get(), items) {
        return Err(ApiError::bad_request(
            "duplicate_key",
            format!("field `{}` appears more than once in its object; each key may appear once", shorten(&path, 200)),
        ));
    }
    let fields = serde_json::from_str(whole.get())
        .map_err(|e| ApiError::bad_request("invalid_body", format!("the request body: {e}")))?;
    Ok((whole, fields))
}

/// One open object or array while scanning for duplicate keys.
enum Open<'a> {
    Object { keys: HashSet<Cow<'a, str>>, last: Option<Cow<'a, str>>, want_key: bool },
    Array { index: usize },
}

/// The first key that repeats within one object, at any depth, as a path
/// (`vendor`, `data.a[2].b`); `None` if every object's keys are distinct.
/// `json` must be valid JSON (it is scanned, not checked). Keys compare
/// after unescaping, so `"a"` and `"\u0061"` are the same key. Repeats whose
/// path starts with `skip` are passed over, and the scan goes on.
fn duplicate_key(json: &str, skip: Option<&str>) -> Option<String> {
    let bytes = json.as_bytes();
    let mut stack: Vec<Open<'_>> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(Open::Object { keys: HashSet::new(), last: None, want_key: true }),
            b'[' => stack.push(Open::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Open::Object { want_key, .. }) => *want_key = true,
                Some(Open::Array { index }) => *index += 1,
                None => {}
            },
            b':' => {
                if let Some(Open::Object { want_key, .. }) = stack.last_mut() {
                    *want_key = false;
                }
            }
            b'"' => {
                let start = i + 1;
                let (mut j, mut escaped) = (start, false);
                while j < bytes.len() && bytes[j] != b'"' {
                    if bytes[j] == b'\\' {
                        escaped = true;
                        j += 1;
                    }
                    j += 1;
                }
                if let Some(Open::Object { keys, last, want_key: true }) = stack.last_mut() {
                    let raw = json.get(start..j.min(bytes.len())).unwrap_or("");
                    let key: Cow<'_, str> = if escaped {
                        Cow::Owned(
                            serde_json::from_str::<String>(&format!("\"{raw}\"")).unwrap_or_else(|_| raw.to_string()),
                        )
                    } else {
                        Cow::Borrowed(raw)
                    };
                    *last = Some(key.clone());
                    if !keys.insert(key) {
                        let path = json_path(&stack);
                        if skip.is_none_or(|prefix| !path.starts_with(prefix)) {
                            return Some(path);
                        }
                    }
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// At most `max` characters of `s`, marked when cut.
fn shorten(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((at, _)) => Cow::Owned(format!("{}…", &s[..at])),
        None => Cow::Borrowed(s),
    }
}

/// `a.b[3].c` from the keys and indexes of the open containers.
fn json_path(stack: &[Open<'_>]) -> String {
    let mut out = String::new();
    for open in stack {
        match open {
            Open::Object { last: Some(k), .. } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Open::Object { last: None, .. } => {}
            Open::Array { index } => out.push_str(&format!("[{index}]")),
        }
    }
    out
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
        assert_eq!(
            b,
            SubmitBody { vendor: "sync".into(), data: "\"test\"".into(), notify_url: None, priority: Priority::Normal }
        );
    }

    #[test]
    fn priority_is_optional_and_a_bad_one_names_the_field() {
        let low = parse_submit(br#"{"vendor": "sync", "data": 1, "priority": "low"}"#, 64).unwrap();
        assert_eq!(low.priority, Priority::Low);
        let null = parse_submit(br#"{"vendor": "sync", "data": 1, "priority": null}"#, 64).unwrap();
        assert_eq!(null.priority, Priority::Normal);
        for bad in [
            &br#"{"vendor": "sync", "data": 1, "priority": "urgent"}"#[..],
            br#"{"vendor": "sync", "data": 1, "priority": 1}"#,
        ] {
            let e = parse_submit(bad, 64).unwrap_err();
            assert_eq!(e.code, "invalid_field");
            assert!(e.message.contains("field `priority`"), "{}", e.message);
        }
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
    fn a_repeated_key_at_any_depth_is_refused_by_its_path() {
        let cases: &[(&str, &str)] = &[
            (r#"{"vendor": "sync", "data": 1, "vendor": "async"}"#, "`vendor`"),
            (r#"{"vendor": "sync", "data": {"a": 1, "b": {"c": 2, "c": 3}}}"#, "`data.b.c`"),
            (r#"{"vendor": "sync", "data": [1, {"x": 1}, {"y": [{"z": 1, "z": 1}]}]}"#, "`data[2].y[0].z`"),
            (r#"{"vendor": "sync", "data": {"a": 1, "\u0061": 2}}"#, "`data.a`"),
            (r#"{"vendor": "sync", "data": 1, "data": 1}"#, "`data`"),
        ];
        for (body, named) in cases {
            let e = parse_submit(body.as_bytes(), 64).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "duplicate_key"), "{body}");
            assert!(e.message.contains(named), "{body}: {}", e.message);
        }
        // The same key in sibling objects, or as a string value, is no repeat.
        let fine = r#"{"vendor": "sync", "data": [{"a": 1}, {"a": 2}, {"b": "a", "c": {"a": "\"a\""}}]}"#;
        assert_eq!(parse_submit(fine.as_bytes(), 64).unwrap().vendor, "sync");
    }

    #[test]
    fn a_batch_is_refused_whole_for_its_own_shape_and_item_by_item_for_theirs() {
        let code = |body: &str| parse_batch(body.as_bytes(), 4).err().map(|e| e.code);
        assert_eq!(code(" "), Some("invalid_json"));
        assert_eq!(code(r#"[{"vendor": "sync", "data": 1}]"#), Some("invalid_body"));
        assert_eq!(code(r#"{"jobs": [], "jobs": []}"#), Some("duplicate_key"));
        // Found past a repeat inside an item, which is the item's own refusal.
        assert_eq!(code(r#"{"jobs": [{"a": 1, "a": 2}], "jobs": []}"#), Some("duplicate_key"));
        let deep = parse_batch(br#"{"jobs": [{"vendor": "sync", "data": [[[[1]]]]}]}"#, 4).unwrap_err();
        assert_eq!(deep.code, "too_deep");
        assert!(deep.message.contains("`jobs`"), "{}", deep.message);
        // A repeated key inside an item fails that item alone, as
        // `parse_submit` would; an item at the depth limit passes (one level
        // more is the whole batch's refusal, above).
        let b = parse_batch(
            br#"{"jobs": [{"vendor": "a", "vendor": "b", "data": 1}, {"vendor": "sync", "data": [[[1]]]}, {"vendor": "sync", "data": [[1]]}]}"#,
            4,
        )
        .unwrap();
        let codes: Vec<_> = b.items.iter().map(|i| i.as_ref().err().map(|e| e.code)).collect();
        assert_eq!(codes, [Some("duplicate_key"), None, None]);
        assert_eq!(
            b.canonical,
            r#"{"jobs":[{"vendor":"a","vendor":"b","data":1},{"vendor":"sync","data":[[[1]]]},{"vendor":"sync","data":[[1]]}]}"#
        );
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
