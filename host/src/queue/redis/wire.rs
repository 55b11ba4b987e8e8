//! Reading the Redis queue's replies: stream entries' payloads, stored dead
//! letters, and `XAUTOCLAIM` and the dispatch script (parsed by hand).

use redis::{RedisError, Value};

use crate::model::{DeadLetter, Millis};
use crate::queue::{QueueError, Result};
use crate::redis_conn::{Peek, Peeked};

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

/// The dispatch script's reply: the entries read, as (stream id, payload,
/// slot taken) triples (the script adds field `g` = `1` to an entry it took
/// a rate-limit slot for); what the promoter did, if it ran (the count
/// moved, -1 if another process holds the role; and the next due time);
/// and the keys it peeked at, if any.
#[derive(Debug, Default)]
pub struct Dispatched {
    pub entries: Vec<(String, String, bool)>,
    pub promoted: Option<(i64, Option<Millis>)>,
    pub peeked: Option<Peeked>,
}

/// Parses the dispatch script's reply, `{{id, fields, ...}, {moved, next
/// due, clock, key, value, ...}}` (see `scripts::DISPATCH`).
pub fn parse_dispatched(v: Value) -> Result<Dispatched> {
    let bad = |what: &str| QueueError::Other(format!("unexpected dispatch reply: {what}"));
    let Value::Array(mut parts) = v else { return Err(bad("not an array")) };
    if parts.len() != 2 {
        return Err(bad("not two parts"));
    }
    let extra = match parts.pop() {
        Some(Value::Array(extra)) => extra,
        _ => return Err(bad("no extras")),
    };
    let entries = match parts.pop() {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let entries = entries
        .chunks(2)
        .filter_map(|pair| match pair {
            [id, fields] => Some((text(id)?, fields_payload(fields).unwrap_or_default(), slot_taken(fields))),
            _ => None,
        })
        .collect();
    let moved = match extra.first() {
        Some(Value::Int(m)) => *m,
        _ => return Err(bad("promoter's count")),
    };
    let next_due = extra.get(1).and_then(text).and_then(|t| t.parse::<f64>().ok()).map(|d| d as Millis);
    let promoted = (moved != -2).then_some((moved, next_due));
    let clock = extra.get(2).and_then(text).and_then(|t| t.parse::<i64>().ok());
    let peeked = clock.map(|clock_ms| Peeked {
        clock_ms,
        values: extra.get(3..).unwrap_or_default().chunks(2).filter_map(peeked_value).collect(),
    });
    Ok(Dispatched { entries, promoted, peeked })
}

/// One (key, value) pair the dispatch script peeked at.
fn peeked_value(pair: &[Value]) -> Option<(String, Option<Peek>)> {
    let [key, value] = pair else { return None };
    let value = match value {
        Value::Nil => None,
        Value::Array(kv) => Some(Peek::Hash(
            kv.chunks(2)
                .filter_map(|p| match p {
                    [k, v] => Some((text(k)?, text(v)?)),
                    _ => None,
                })
                .collect(),
        )),
        other => Some(Peek::Text(text(other)?)),
    };
    Some((text(key)?, value))
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
