//! Fair order on the embedded queue (issue 20): the SQL that tags a queue
//! row when it is written and picks the next rows to lease. Used by
//! `queue::sqlite` (enqueue, lease) and by `store::sqlite` (a submit writes
//! its queue row in the job's own transaction). The design is explained at
//! the top of `queue/sqlite.rs`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::Message;
use crate::model::{Millis, millis};

/// The default `queue_settings.priority_aging`.
pub const DEFAULT_AGING: Duration = Duration::from_secs(30);

/// What orders the embedded queue: each API key name's weight (default 1)
/// and how long a lower priority waits at most, per level, behind higher
/// ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Fairness {
    pub weights: HashMap<String, f64>,
    pub aging: Duration,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness { weights: HashMap::new(), aging: DEFAULT_AGING }
    }
}

impl Fairness {
    /// The weight of the key named `key` (`""`: jobs of no key): 1 unless
    /// configured; anything not a positive number counts as 1.
    pub fn weight(&self, key: &str) -> f64 {
        self.weights.get(key).copied().filter(|w| w.is_finite() && *w > 0.0).unwrap_or(1.0)
    }
}

/// Marks rows due by `?1` ready (index `queue_waiting`).
pub const PROMOTE: &str = "UPDATE queue SET ready = 1 WHERE ready = 0 AND visible_at <= ?1";
/// A vendor's first ready row in fair order (index `queue_ready`).
pub const HEAD: &str = "SELECT id, key, vt FROM queue WHERE vendor = ?1 AND ready = 1 ORDER BY vt, id LIMIT 1";
/// A key's ready row of best aged priority at a vendor (index `queue_rank`).
pub const BEST: &str =
    "SELECT id, vt FROM queue WHERE vendor = ?1 AND key = ?2 AND ready = 1 ORDER BY rank, id LIMIT 1";
/// A key's highest tag queued at a vendor (index `queue_flow`).
pub const LAST_TAG: &str = "SELECT MAX(vt) FROM queue WHERE vendor = ?1 AND key = ?2";
/// The next time a row not ready becomes due (index `queue_waiting`).
pub const NEXT_DUE: &str = "SELECT MIN(visible_at) FROM queue WHERE ready = 0";

/// The statements above with the index each must use (checked against
/// `EXPLAIN QUERY PLAN` by the tests): each is one seek, whatever the
/// backlog.
pub const PLANNED: [(&str, &str); 5] = [
    (PROMOTE, "queue_waiting"),
    (HEAD, "queue_ready"),
    (BEST, "queue_rank"),
    (LAST_TAG, "queue_flow"),
    (NEXT_DUE, "queue_waiting"),
];

/// Writes queue rows for `msgs`, visible at `now`, each tagged in its
/// vendor's virtual time: `max(V, the key's last tag) + 1/weight`, or `V`
/// for a key with nothing queued there (its first job is next in line: a
/// start tag, as in SFQ).
pub fn insert(c: &Connection, msgs: &[Message], fair: &Fairness, now: Millis) -> rusqlite::Result<()> {
    let aging = millis(fair.aging);
    for m in msgs {
        let key = m.key.as_deref().unwrap_or("");
        let level = m.priority.unwrap_or_default().level();
        // Read first: the vendor's clock row exists for all but its first
        // job, and a read is cheaper than an insert that changes nothing.
        let v: Option<f64> = c
            .prepare_cached("SELECT v FROM queue_clock WHERE vendor = ?1")?
            .query_row([&m.vendor], |r| r.get(0))
            .optional()?;
        let v = match v {
            Some(v) => v,
            None => {
                c.prepare_cached("INSERT INTO queue_clock (vendor, v) VALUES (?1, 0)")?.execute([&m.vendor])?;
                0.0
            }
        };
        let last: Option<f64> = c.prepare_cached(LAST_TAG)?.query_row(params![m.vendor, key], |r| r.get(0))?;
        let tag = last.map_or(v, |l| l.max(v) + 1.0 / fair.weight(key));
        c.prepare_cached(
            "INSERT INTO queue (payload, visible_at, vendor, key, rank, vt, ready, request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
        )?
        .execute(params![
            m.encode(),
            now,
            m.vendor,
            key,
            now.saturating_add(level.saturating_mul(aging)),
            tag,
            m.request_id
        ])?;
    }
    Ok(())
}

/// What one lease call may take: vendors to skip, and vendors of which to
/// take a few rows at most; and until when the rows taken are leased.
pub struct Pick<'a> {
    pub skip: &'a HashSet<String>,
    pub limited: &'a HashMap<String, usize>,
    pub max: usize,
    pub lease_until: Millis,
    /// The vendor served last (round-robin across vendors starts after it).
    pub after: &'a str,
}

/// Makes rows due by `now` ready (released, delayed, or whose lease ran
/// out), then picks up to `pick.max` ready rows: vendors in turn
/// (round-robin), within a vendor the row with the lowest tag, and within
/// that row's key the one with the best aged priority (which takes the tag,
/// the other row the one it had). Returns the rows, leased until
/// `pick.lease_until`, and the last vendor served.
pub fn pick(c: &Connection, now: Millis, pick: &Pick<'_>) -> rusqlite::Result<(Vec<Taken>, Option<String>)> {
    c.prepare_cached(PROMOTE)?.execute([now])?;
    let all: Vec<String> = c
        .prepare_cached("SELECT vendor FROM queue_clock ORDER BY vendor")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    // Round-robin: the vendors after the last one served come first.
    let split = all.iter().position(|v| v.as_str() > pick.after).unwrap_or(all.len());
    let mut turn: Vec<String> =
        all[split..].iter().chain(&all[..split]).filter(|v| !pick.skip.contains(*v)).cloned().collect();
    let mut picked = Vec::new();
    let mut taken: HashMap<String, usize> = HashMap::new();
    let mut last = None;
    while picked.len() < pick.max && !turn.is_empty() {
        let mut next_round = Vec::with_capacity(turn.len());
        for vendor in turn {
            if picked.len() >= pick.max {
                break;
            }
            let Some(row) = pick_in(c, &vendor, pick.lease_until)? else { continue };
            picked.push(row);
            let n = taken.entry(vendor.clone()).or_default();
            *n += 1;
            if pick.limited.get(&vendor).is_none_or(|cap| *n < *cap) {
                next_round.push(vendor.clone());
            }
            last = Some(vendor);
        }
        turn = next_round;
    }
    Ok((picked, last))
}

/// A row taken by a lease call.
pub struct Taken {
    pub id: i64,
    pub payload: String,
    pub deliveries: i64,
    pub token: i64,
}

/// The next row of one vendor, taken out of the ready set and leased until
/// `until` in one write of the row (its tag swapped with its key's head
/// first when priority picks another row).
fn pick_in(c: &Connection, vendor: &str, until: Millis) -> rusqlite::Result<Option<Taken>> {
    let head: Option<(i64, String, f64)> =
        c.prepare_cached(HEAD)?.query_row([vendor], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
    let Some((head_id, key, head_vt)) = head else { return Ok(None) };
    let (best_id, best_vt): (i64, f64) =
        c.prepare_cached(BEST)?.query_row(params![vendor, key], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if best_id != head_id {
        let mut swap = c.prepare_cached("UPDATE queue SET vt = ?2 WHERE id = ?1")?;
        swap.execute(params![head_id, best_vt])?;
        swap.execute(params![best_id, head_vt])?;
    }
    // OR FAIL: see `store::sqlite::start_attempt` (no statement journal).
    let taken = c
        .prepare_cached(
            "UPDATE OR FAIL queue SET ready = 0, visible_at = ?2, deliveries = deliveries + 1, leased = 1, token = token + 1
             WHERE id = ?1 RETURNING payload, deliveries, token",
        )?
        .query_row(params![best_id, until], |r| {
            Ok(Taken { id: best_id, payload: r.get(0)?, deliveries: r.get(1)?, token: r.get(2)? })
        })?;
    c.prepare_cached("UPDATE queue_clock SET v = max(v, ?2) WHERE vendor = ?1")?.execute(params![vendor, head_vt])?;
    Ok(Some(taken))
}

/// When a lease call that found nothing should look again: the next row
/// due, or the end of a skipped vendor's wait, whichever is first.
pub fn next_wake(c: &Connection, blocked_until: Option<Millis>) -> rusqlite::Result<Option<Millis>> {
    let due: Option<Millis> = c.prepare_cached(NEXT_DUE)?.query_row([], |r| r.get(0))?;
    Ok(match (due, blocked_until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}
