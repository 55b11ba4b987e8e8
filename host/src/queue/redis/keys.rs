//! Where the Redis queue keeps things: its partitions and their keys, which
//! partition a job or a dead letter belongs to, and how a lease's entry id
//! names its partition.
//!
//! Partition `n` of prefix `vh` keeps every key under one hash tag
//! (`{vh:p07}:jobs`, `{vh:p07}:delayed`, ...), so each partition lives in
//! one slot of a cluster and its scripts and transactions never span slots.
//! The tag is `{vh:pNN}`, or `{vh:pNN.K}` with the smallest K that puts it in
//! the n-th of P equal ranges of the 16384 slots: partitions spread over the
//! slot space evenly, so over masters that own even slot ranges (as
//! `redis-cli --cluster create` and `--cluster rebalance` leave them) rather
//! than wherever 16 hashes happen to fall. One partition on one node keeps
//! the names of the unpartitioned queue (`vh:jobs`, ...), so existing
//! deployments keep their entries.

/// The keys of one partition.
#[derive(Debug, Clone)]
pub struct Keys {
    /// What every key of the partition starts with (the fair order's
    /// scripts name their lane keys from it).
    pub base: String,
    /// The stream (field `m` = payload), read by the group `workers`.
    pub jobs: String,
    /// Sorted set of delayed entries, member `<token>|<payload>`, score = due ms.
    pub delayed: String,
    /// Dead letters: hash id → JSON...
    pub dead: String,
    /// ...and sorted set id → died_at.
    pub dead_at: String,
    /// Set of the job ids with an entry in this partition.
    pub present: String,
    /// Who promotes this partition's delayed entries right now.
    pub promoter: String,
    /// Count of entries waiting in the lanes.
    pub waiting: String,
    /// A short list lease calls block on, pushed when entries join lanes.
    pub bell: String,
}

impl Keys {
    /// Every partition's keys: legacy names for one partition on one node,
    /// hash-tagged names otherwise.
    pub fn all(prefix: &str, partitions: usize, cluster: bool) -> Vec<Keys> {
        if partitions == 1 && !cluster {
            return vec![Keys::under(prefix)];
        }
        (0..partitions).map(|p| Keys::under(&format!("{{{}}}", tag(prefix, p, partitions)))).collect()
    }

    fn under(base: &str) -> Keys {
        Keys {
            base: base.to_string(),
            jobs: format!("{base}:jobs"),
            delayed: format!("{base}:delayed"),
            dead: format!("{base}:dead"),
            dead_at: format!("{base}:dead:at"),
            present: format!("{base}:present"),
            promoter: format!("{base}:promoter"),
            waiting: format!("{base}:waiting"),
            bell: format!("{base}:bell"),
        }
    }
}

/// Redis Cluster's slot count.
const SLOTS: usize = 16_384;

/// Partition `p`'s hash tag (without braces): `<prefix>:pNN`, suffixed with
/// `.K` until its slot is in the p-th of `partitions` equal slot ranges.
fn tag(prefix: &str, p: usize, partitions: usize) -> String {
    let (lo, hi) = (p * SLOTS / partitions, (p + 1) * SLOTS / partitions);
    let base = format!("{prefix}:p{p:02}");
    if (lo..hi).contains(&slot(&base)) {
        return base;
    }
    // About SLOTS / (hi - lo) tries; bounded anyway (the ranges are at
    // least 16 slots wide with at most 1024 partitions).
    (1..1_000_000).map(|k| format!("{base}.{k}")).find(|t| (lo..hi).contains(&slot(t))).unwrap_or(base)
}

/// The cluster slot of a hash tag: CRC16 (XMODEM) mod 16384, as Redis
/// computes it.
fn slot(tag: &str) -> usize {
    let mut crc: u16 = 0;
    for b in tag.as_bytes() {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    usize::from(crc) % SLOTS
}

/// The partition of a job id or dead-letter id: FNV-1a (stable across
/// processes and versions, unlike std's hasher) modulo the partition count.
pub fn partition_of(id: &str, partitions: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as usize
}

/// A lease's entry id: the stream id alone with one partition, else
/// `<partition>/<stream id>`.
pub fn entry_id(partition: usize, stream_id: &str, partitions: usize) -> String {
    if partitions == 1 { stream_id.to_string() } else { format!("{partition}/{stream_id}") }
}

/// The partition and stream id of an entry id (None if it names no
/// partition of this queue).
pub fn split_entry_id(entry_id: &str, partitions: usize) -> Option<(usize, &str)> {
    match entry_id.split_once('/') {
        Some((p, id)) => p.parse::<usize>().ok().filter(|p| *p < partitions).map(|p| (p, id)),
        None if partitions == 1 => Some((0, entry_id)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_on_one_node_keeps_the_old_names() {
        let k = Keys::all("vh", 1, false);
        assert_eq!((k[0].jobs.as_str(), k[0].dead_at.as_str()), ("vh:jobs", "vh:dead:at"));
    }

    #[test]
    fn slots_are_redis_s() {
        // `CLUSTER KEYSLOT foo` and the CRC16/XMODEM check value.
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("123456789"), 0x31c3);
    }

    #[test]
    fn partitions_share_one_hash_tag_each_spread_over_the_slots() {
        let k = Keys::all("vh", 16, false);
        assert_eq!(k.len(), 16);
        for (p, keys) in k.iter().enumerate() {
            let tag = keys.jobs.strip_suffix(":jobs").and_then(|t| t.strip_prefix('{')?.strip_suffix('}'));
            let tag = tag.expect("a hash-tagged key");
            assert!(tag.starts_with(&format!("vh:p{p:02}")), "{tag}");
            assert_eq!(keys.promoter, format!("{{{tag}}}:promoter"));
            assert_eq!(slot(tag) / 1024, p, "{tag} is in the {p}th sixteenth of the slots");
        }
        assert_eq!(Keys::all("vh", 1, true)[0].delayed, "{vh:p00}:delayed");
    }

    #[test]
    fn jobs_spread_over_partitions_and_entry_ids_round_trip() {
        let mut counts = [0usize; 16];
        for _ in 0..16_000 {
            counts[partition_of(&uuid::Uuid::now_v7().to_string(), 16)] += 1;
        }
        assert!(counts.iter().all(|c| (600..1400).contains(c)), "{counts:?}");
        assert_eq!(split_entry_id(&entry_id(5, "1-0", 16), 16), Some((5, "1-0")));
        assert_eq!(split_entry_id(&entry_id(0, "1-0", 1), 1), Some((0, "1-0")));
        assert_eq!(split_entry_id("1-0", 16), None);
        assert_eq!(split_entry_id("16/1-0", 16), None);
    }
}
