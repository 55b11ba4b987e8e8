//! Every Prometheus series the service exports: its name, in one place, and
//! its HELP text. Code records through these constants; `describe` gives
//! each its help once the recorder is installed.

pub const JOBS_SUBMITTED: &str = "vendorhost_jobs_submitted_total";
pub const JOBS_COMPLETED: &str = "vendorhost_jobs_completed_total";
pub const JOBS_FAILED: &str = "vendorhost_jobs_failed_total";
pub const JOBS_CANCELLED: &str = "vendorhost_jobs_cancelled_total";
pub const JOBS_DELAYED: &str = "vendorhost_jobs_delayed_total";
pub const QUOTA_EXCEEDED: &str = "vendorhost_quota_exceeded_total";
pub const USAGE_CALLS: &str = "vendorhost_usage_calls_total";
pub const USAGE_BYTES_IN: &str = "vendorhost_usage_bytes_in_total";
pub const USAGE_BYTES_OUT: &str = "vendorhost_usage_bytes_out_total";
pub const USAGE_CPU: &str = "vendorhost_usage_cpu_microseconds_total";
pub const PLUGIN_PEAK_MEMORY: &str = "vendorhost_plugin_peak_memory_bytes";
pub const KEY_SUBMITS_REFUSED: &str = "vendorhost_key_submits_refused_total";
pub const JOB_RETRIES: &str = "vendorhost_job_retries_total";
pub const RATE_LIMIT_DELAY: &str = "vendorhost_rate_limit_delay_seconds";
pub const RATE_LIMIT_LEASE_SLOTS: &str = "vendorhost_rate_limit_lease_slots_total";
pub const VENDOR_CALL: &str = "vendorhost_vendor_call_seconds";
pub const QUEUE_ERRORS: &str = "vendorhost_queue_errors_total";
pub const LEASES_LOST: &str = "vendorhost_leases_lost_total";
pub const JOBS_RECOVERED: &str = "vendorhost_jobs_recovered_total";
pub const QUEUE_GROUP_RECREATED: &str = "vendorhost_queue_group_recreated_total";
pub const QUEUE_DEPTH: &str = "vendorhost_queue_depth";
pub const DEAD_LETTERS: &str = "vendorhost_dead_letters";
pub const SWEEPER_REQUEUED: &str = "vendorhost_sweeper_requeued_total";
pub const WEBHOOKS_ACCEPTED: &str = "vendorhost_webhooks_accepted_total";
pub const WEBHOOKS_REJECTED: &str = "vendorhost_webhooks_rejected_total";
pub const BREAKER_STATE: &str = "vendorhost_breaker_state";
pub const BREAKER_TRANSITIONS: &str = "vendorhost_breaker_transitions_total";
pub const PLUGINS_LOADED: &str = "vendorhost_plugins_loaded";
pub const PLUGINS_REJECTED: &str = "vendorhost_plugins_rejected_total";
pub const PLUGIN_HTTP_REQUESTS: &str = "vendorhost_plugin_http_requests_total";
pub const PLUGIN_HTTP_SECONDS: &str = "vendorhost_plugin_http_seconds";
pub const PLUGIN_HTTP_DENIED: &str = "vendorhost_plugin_http_denied_total";
pub const HTTP_CONNECTIONS: &str = "vendorhost_http_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "vendorhost_http_connections_refused_total";
pub const HTTP_HEADER_TIMEOUTS: &str = "vendorhost_http_header_timeouts_total";
pub const HTTP_SHED: &str = "vendorhost_http_shed_total";
pub const SQLITE_BATCH_SIZE: &str = "vendorhost_sqlite_batch_size";
pub const SQLITE_REPLAYS: &str = "vendorhost_sqlite_group_replays_total";
pub const WORKER_LAST_POLL_AGE: &str = "vendorhost_worker_last_poll_age_seconds";
pub const REDACTIONS: &str = "vendorhost_redactions_total";
pub const NOTIFICATIONS: &str = "vendorhost_notifications_total";
pub const VENDOR_THROTTLED: &str = "vendorhost_vendor_throttled_total";
pub const VENDOR_PAUSES: &str = "vendorhost_vendor_pauses_total";
pub const VENDOR_CONFIGURED_RATE: &str = "vendorhost_vendor_configured_rate";
pub const VENDOR_LEARNED_RATE: &str = "vendorhost_vendor_learned_rate";
pub const VENDOR_CALLS_SAVED: &str = "vendorhost_vendor_calls_saved_total";
pub const REDIS_ROUND_TRIPS: &str = "vendorhost_redis_round_trips_total";
pub const STORE_OPERATIONS: &str = "vendorhost_store_operations_total";

/// `STORE_OPERATIONS`'s `op` for MongoDB: the command's own name when it is
/// one of these, else `other`; the driver's and readiness probes' own
/// traffic is `monitoring` (not a job's cost).
pub const MONGO_OPS: [&str; 11] = [
    "insert",
    "update",
    "delete",
    "find",
    "findAndModify",
    "aggregate",
    "getMore",
    "count",
    "distinct",
    "createIndexes",
    "bulkWrite",
];

/// The `op` label of a MongoDB command named `name` (see `MONGO_OPS`).
pub fn mongo_op(name: &str) -> &'static str {
    match name {
        "hello" | "isMaster" | "ismaster" | "ping" | "endSessions" => "monitoring",
        _ => MONGO_OPS.iter().find(|op| **op == name).copied().unwrap_or("other"),
    }
}

/// Why a job is put back before a call (`JOBS_DELAYED`'s `reason`).
pub const DELAY_REASONS: [&str; 8] =
    ["bulkhead", "rate_limit", "limiter_error", "breaker_open", "vendor_missing", "held", "vendor_paused", "coalesced"];
/// How a vendor call was saved (`VENDOR_CALLS_SAVED`'s `how`): a stored
/// result answered the job, or an identical job's call in flight did.
pub const SAVED_HOW: [&str; 2] = ["cache", "coalesced"];
/// `WEBHOOKS_ACCEPTED`'s reasons.
pub const WEBHOOK_ACCEPTED_REASONS: [&str; 2] = ["applied", "already_finished"];
/// `WEBHOOKS_REJECTED`'s reasons.
pub const WEBHOOK_REJECTED_REASONS: [&str; 13] = [
    "replay",
    "missing_header",
    "bad_timestamp",
    "stale",
    "mismatch",
    "bad_secret",
    "no_secret",
    "unknown_job",
    "in_progress",
    "not_yet",
    "unparsable",
    "store_error",
    "queue_error",
];
/// `JOBS_CANCELLED`'s states.
pub const CANCELLED_STATES: [&str; 3] = ["pending", "processing", "accepted"];
/// `PLUGIN_HTTP_DENIED`'s reasons.
pub const HTTP_DENIED_REASONS: [&str; 2] = ["not_granted", "private_address"];

/// Makes the known series of `vendors` present (at 0 when nothing was
/// counted yet; a count is never changed), so dashboards and alerts see
/// them before the first event.
pub fn zero_series<'a>(vendors: impl IntoIterator<Item = &'a str>) {
    use metrics::counter;
    for v in vendors {
        for name in [JOBS_SUBMITTED, JOBS_COMPLETED, JOBS_FAILED, VENDOR_THROTTLED, VENDOR_PAUSES] {
            counter!(name, "vendor" => v.to_string()).increment(0);
        }
        for reason in DELAY_REASONS {
            counter!(JOBS_DELAYED, "vendor" => v.to_string(), "reason" => reason).increment(0);
        }
        for reason in WEBHOOK_ACCEPTED_REASONS {
            counter!(WEBHOOKS_ACCEPTED, "vendor" => v.to_string(), "reason" => reason).increment(0);
        }
        for reason in WEBHOOK_REJECTED_REASONS {
            counter!(WEBHOOKS_REJECTED, "vendor" => v.to_string(), "reason" => reason).increment(0);
        }
        for state in CANCELLED_STATES {
            counter!(JOBS_CANCELLED, "vendor" => v.to_string(), "state" => state).increment(0);
        }
        for reason in HTTP_DENIED_REASONS {
            counter!(PLUGIN_HTTP_DENIED, "vendor" => v.to_string(), "reason" => reason).increment(0);
        }
        for how in SAVED_HOW {
            counter!(VENDOR_CALLS_SAVED, "vendor" => v.to_string(), "how" => how).increment(0);
        }
    }
}

/// Registers the HELP text of every series (a no-op without a recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(JOBS_SUBMITTED, "Jobs accepted by POST /jobs, by vendor.");
    describe_counter!(JOBS_COMPLETED, "Jobs that ended complete, by vendor.");
    describe_counter!(JOBS_FAILED, "Jobs that ended failed, by vendor.");
    describe_counter!(
        JOBS_CANCELLED,
        "Jobs cancelled by their client (POST /jobs/{id}/cancel), by vendor and the state they were in (pending, processing, accepted)."
    );
    describe_counter!(USAGE_CALLS, "Vendor calls (plugin fetches), by API key name (`-`: no key) and vendor.");
    describe_counter!(
        USAGE_BYTES_IN,
        "Bytes plugins received over HTTP (headers and bodies), by API key name and vendor."
    );
    describe_counter!(
        USAGE_BYTES_OUT,
        "Bytes plugins sent over HTTP (request line, headers, bodies), by API key name and vendor."
    );
    describe_counter!(USAGE_CPU, "CPU time of plugin calls, microseconds, by API key name and vendor.");
    describe_histogram!(PLUGIN_PEAK_MEMORY, "Peak linear memory of a plugin call, bytes, by vendor.");
    describe_counter!(
        QUOTA_EXCEEDED,
        "Jobs failed without a vendor call because their API key's quota for the vendor was used up, by key name and vendor."
    );
    describe_counter!(
        KEY_SUBMITS_REFUSED,
        "Submits refused by their API key's limits (`auth.keys.<name>`), by key name and reason (rate, in_flight)."
    );
    describe_counter!(
        JOBS_DELAYED,
        "Jobs put back on the queue before a call (bulkhead, rate limit, vendor paused, open breaker, missing vendor), by vendor and reason."
    );
    describe_counter!(
        JOB_RETRIES,
        "Vendor calls that failed with a retryable error and will be retried, by vendor and error kind."
    );
    describe_histogram!(RATE_LIMIT_DELAY, "How long a job was delayed for a rate-limit slot, in seconds, by vendor.");
    describe_counter!(
        RATE_LIMIT_LEASE_SLOTS,
        "Calls whose rate-limit slot was taken with their lease (no ask of their own; Redis queue on one node), by vendor."
    );
    describe_histogram!(VENDOR_CALL, "Duration of plugin fetch calls, in seconds, by vendor and outcome.");
    describe_counter!(QUEUE_ERRORS, "Queue or store operations that failed in the worker, by operation.");
    describe_counter!(
        LEASES_LOST,
        "Deliveries whose lease was lost to another worker while held (the holder stopped acting for them)."
    );
    describe_counter!(JOBS_RECOVERED, "Overdue jobs the sweeper re-enqueued because their queue entry was gone.");
    describe_counter!(
        QUEUE_GROUP_RECREATED,
        "Times the Redis consumer group had vanished (data loss) and was recreated."
    );
    describe_gauge!(QUEUE_DEPTH, "Queue entries by state (ready, delayed, leased).");
    describe_gauge!(DEAD_LETTERS, "Entries in the dead-letter queue.");
    describe_counter!(SWEEPER_REQUEUED, "Pending jobs the sweeper enqueued because they had no queue entry.");
    describe_counter!(WEBHOOKS_ACCEPTED, "Vendor webhooks accepted, by vendor and result.");
    describe_counter!(WEBHOOKS_REJECTED, "Vendor webhooks refused, by vendor and reason.");
    describe_gauge!(BREAKER_STATE, "Circuit breaker state per vendor: 0 closed, 1 open, 2 half-open.");
    describe_counter!(BREAKER_TRANSITIONS, "Circuit breaker state changes, by vendor and new state.");
    describe_gauge!(PLUGINS_LOADED, "Vendor plugins currently loaded.");
    describe_counter!(PLUGINS_REJECTED, "Plugin files refused at load.");
    describe_counter!(PLUGIN_HTTP_REQUESTS, "Outbound HTTP requests made for plugins, by vendor and outcome.");
    describe_histogram!(
        PLUGIN_HTTP_SECONDS,
        "Duration of outbound HTTP requests made for plugins, in seconds, by vendor."
    );
    describe_counter!(
        PLUGIN_HTTP_DENIED,
        "Outbound HTTP requests refused, by vendor and reason (not_granted, private_address)."
    );
    describe_gauge!(HTTP_CONNECTIONS, "Open HTTP connections to the API.");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections refused, by cap (total: the connection cap; per_ip: the per-address cap)."
    );
    describe_counter!(HTTP_HEADER_TIMEOUTS, "HTTP connections closed because request headers did not arrive in time.");
    describe_counter!(HTTP_SHED, "Requests answered 503 by load shedding.");
    describe_histogram!(SQLITE_BATCH_SIZE, "Writes committed together by the embedded SQLite writer (group commit).");
    describe_counter!(
        SQLITE_REPLAYS,
        "Groups of writes the embedded SQLite writer ran again, each write in its own savepoint, because one of them failed or panicked."
    );
    describe_counter!(
        REDACTIONS,
        "Personal data cleaning removed from stored results, by vendor and kind (key: a key naming personal data; email, phone, card, iban, ssn: a value a detector found)."
    );
    describe_counter!(
        NOTIFICATIONS,
        "Completion notification attempts (notify_url), by outcome: delivered, retry (failed, tried again later), gave_up (failed past notify.max_age), refused (a non-public address or no signing secret: not retried)."
    );
    describe_counter!(
        VENDOR_THROTTLED,
        "Vendor answers that said 429 Too Many Requests (an HTTP answer to a plugin, or a plugin's rate-limited error), by vendor."
    );
    describe_counter!(
        VENDOR_PAUSES,
        "Fleet-wide pauses of a vendor set by this process (a 429, or an answer saying no calls are left until a reset), by vendor."
    );
    describe_counter!(
        VENDOR_CALLS_SAVED,
        "Jobs completed without a vendor call of their own (cache_ttl set), by vendor and how: cache (a stored result younger than cache_ttl answered it), coalesced (an identical job's call in flight answered it)."
    );
    describe_counter!(
        REDIS_ROUND_TRIPS,
        "Requests this process sent to Redis (a command, a pipeline or a script invocation is one), by connection kind (shared, blocking)."
    );
    describe_counter!(
        STORE_OPERATIONS,
        "Store operations of this process, by backend and op: mongo, one per command sent (insert, update, find, findAndModify, ..., other; monitoring: hello, ping, endSessions); sqlite, one per write (group-committed transaction share) or read (the embedded database holds the queue too)."
    );
    describe_gauge!(VENDOR_CONFIGURED_RATE, "A vendor's configured rate limit, in calls per second, by vendor.");
    describe_gauge!(
        VENDOR_LEARNED_RATE,
        "The rate the workers use for a vendor, in calls per second: the configured rate, lowered after repeated 429s and recovering toward it, by vendor."
    );
    describe_gauge!(
        WORKER_LAST_POLL_AGE,
        "Seconds since this process's worker loop last polled the queue successfully (0 while every worker slot is busy)."
    );
}

/// `s` fit for one log line: control characters (newline, carriage return,
/// escape, ...) and the Unicode line and paragraph separators are written
/// as escapes (`\n`, `\u{1b}`), everything else as is. For log fields that
/// carry file names, plugin output or vendor input, so that no value can
/// end its event early or forge another.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mongo_commands_map_to_a_fixed_set_of_ops() {
        assert_eq!(super::mongo_op("findAndModify"), "findAndModify");
        assert_eq!(super::mongo_op("insert"), "insert");
        assert_eq!(super::mongo_op("hello"), "monitoring");
        assert_eq!(super::mongo_op("listIndexes"), "other");
    }

    #[test]
    fn one_line_escapes_what_could_break_a_line_and_nothing_else() {
        assert_eq!(super::one_line("sync.wasm"), "sync.wasm");
        assert_eq!(super::one_line("a \"quoted\" é"), "a \"quoted\" é");
        let forged = "x.wasm\n2024-01-01T00:00:00Z  INFO plugin loaded vendor=evil\r\u{1b}[2J\u{2028}";
        let safe = super::one_line(forged);
        assert!(!safe.contains(['\n', '\r', '\u{1b}', '\u{2028}']), "{safe}");
        assert_eq!(safe, "x.wasm\\n2024-01-01T00:00:00Z  INFO plugin loaded vendor=evil\\r\\u{1b}[2J\\u{2028}");
    }
}
