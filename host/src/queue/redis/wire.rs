//! Reading the Redis queue's replies: stream entries' payloads, stored dead
//! letters, and `XAUTOCLAIM` and the dispatch script (parsed by hand).

use redis::{RedisError, Value};

use crate::model::{DeadLetter, Millis};
use crate::queue::{QueueError, Result};

/// A stored dead letter; an unreadable record is still shown, so an operator
/// can remove it.
pub fn letter_of(id: String, body: String, died_at: Millis) -> DeadLetter {
    serde_json::from_str(&body).unwrap_or_else(|e| DeadLetter {
        id,
        request_id: None,
        vendor: None,
        payload: body,
        reason: format!("unreadable dead letter: {e}"),
        died_at,
    })
}

pub fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// The payload of an entry's fields: field `m`; an entry written by
/// someone else (no `m`) is rendered as a JSON object of its fields, for the
/// worker to dead-letter as malformed.
fn payload_from<'a>(fields: impl Iterator<Item = (String, &'a Value)>) -> String {
    let fields: Vec<(String, String)> = fields.map(|(k, v)| (k, value_text(v))).collect();
    if let Some((_, m)) = fields.iter().find(|(k, _)| k == "m") {
        return m.clone();
    }
    let obj: serde_json::Map<String, serde_json::Value> =
        fields.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    serde_json::Value::Object(obj).to_string()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

pub type Claimed = (String, Vec<(String, Option<String>)>, Vec<String>);

/// Parses `XAUTOCLAIM` by hand: redis-rs drops the ids of entries returned
/// without fields (deleted while pending, Redis 6.2), which must be acked.
pub fn parse_autoclaim(v: Value) -> Result<Claimed> {
    let bad = |what: &str| QueueError::Other(format!("unexpected XAUTOCLAIM reply: {what}"));
    let Value::Array(mut items) = v else { return Err(bad("not an array")) };
    if items.len() < 2 {
        return Err(bad("too short"));
    }
    let deleted = if items.len() > 2 { ids_of(items.remove(2)) } else { Vec::new() };
    let entries = items.remove(1);
    let next = text(&items[0]).ok_or_else(|| bad("cursor"))?;
    let Value::Array(entries) = entries else { return Err(bad("entries")) };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else { continue }; // a nil entry has no id to ack
        if parts.is_empty() {
            continue;
        }
        let fields = if parts.len() > 1 { parts.remove(1) } else { Value::Nil };
        let Some(id) = text(&parts[0]) else { continue };
        out.push((id, fields_payload(&fields)));
    }
    Ok((next, out, deleted))
}

/// The payload of an entry's fields as a reply gives them (None: no fields).
fn fields_payload(fields: &Value) -> Option<String> {
    match fields {
        Value::Array(kv) => {
            let pairs = kv.chunks(2).filter_map(|p| match p {
                [k, v] => Some((text(k).unwrap_or_default(), v)),
                _ => None,
            });
            Some(payload_from(pairs))
        }
        Value::Map(kv) => Some(payload_from(kv.iter().map(|(k, v)| (text(k).unwrap_or_default(), v)))),
        _ => None,
    }
}

/// Parses the dispatch script's reply, `{id, fields, id, fields, ...}`,
/// into (stream id, payload, slot taken) triples: the script adds field
/// `g` = `1` to an entry it took a rate-limit slot for.
pub fn parse_dispatched(v: Value) -> Result<Vec<(String, String, bool)>> {
    let items = match v {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        _ => return Err(QueueError::Other("unexpected dispatch reply: not an array".into())),
    };
    Ok(items
        .chunks(2)
        .filter_map(|pair| match pair {
            [id, fields] => Some((text(id)?, fields_payload(fields).unwrap_or_default(), slot_taken(fields))),
            _ => None,
        })
        .collect())
}

/// Whether the fields carry the dispatch script's `g` = `1`.
fn slot_taken(fields: &Value) -> bool {
    let Value::Array(kv) = fields else { return false };
    kv.chunks(2).any(|p| matches!(p, [k, v] if text(k).as_deref() == Some("g") && text(v).as_deref() == Some("1")))
}

fn ids_of(v: Value) -> Vec<String> {
    match v {
        Value::Array(ids) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
