//! `GET /vendors`: what is loaded, with its effective limits and breaker
//! state, and what was rejected and why.

use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;

use super::error::ApiError;
use super::vendor_usage::{KeyLimitsView, VendorUsage};
use super::views::{BreakerView, PluginEventView, PluginView, RejectedView};
use super::{AppState, Route, auth};

pub fn routes() -> Vec<Route> {
    vec![Route::get("/vendors", list)]
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Limits {
    /// The configured rate (config over the plugin's `info`).
    pub rate_per_second: f64,
    /// The rate the workers use now: the configured one, lowered after
    /// repeated 429s and recovering toward it (never above it).
    pub learned_rate_per_second: f64,
    /// While the vendor is paused for the whole fleet (a 429, or an answer
    /// saying no calls are left): milliseconds until the pause ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_for_ms: Option<u64>,
    pub burst: u32,
    pub max_in_flight: usize,
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub max_attempts: u32,
    /// Outbound hosts the operator granted.
    pub allowed_hosts: Vec<String>,
}

/// A config key the plugin declared (contract 0.2.0); the value is never shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConfigKeyView {
    pub name: String,
    /// The vendor is not called while a required key is unset.
    pub required: bool,
    pub secret: bool,
    pub description: String,
    /// Whether `[vendors.<id>.config]` sets it (non-empty).
    pub set: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VendorView {
    #[serde(flatten)]
    pub plugin: PluginView,
    pub limits: Limits,
    /// Hosts the plugin's `info` asks for that `allowed_hosts` does not cover:
    /// its calls to them are denied until granted.
    pub ungranted_hosts: Vec<String>,
    /// The config keys the plugin reads, and which are set.
    pub config: Vec<ConfigKeyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerView>,
    /// Calls to this vendor and their cost, per API key name and in total
    /// (absent when the store cannot answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<VendorUsage>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VendorList {
    pub vendors: Vec<VendorView>,
    pub rejected: Vec<RejectedView>,
    /// Recent plugin loads, reloads, removals and rejections, newest first
    /// (the last 100 in this process).
    pub history: Vec<PluginEventView>,
    /// Every configured API key name with its limits in force and where its
    /// quotas stand, by name (absent when the store cannot answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<KeyLimitsView>>,
}

/// Loaded vendors and rejected plugin files; usage per vendor and API key,
/// and each key's limits.
#[utoipa::path(get, path = "/vendors", tag = "vendors", operation_id = "list_vendors",
    security((), ("admin_key" = [])),
    responses((status = 200, description = "Vendors", body = VendorList),
              (status = 401, description = "Admin key required", body = super::error::ErrorBody)))]
pub async fn list(State(st): State<AppState>, headers: HeaderMap) -> Result<axum::Json<VendorList>, ApiError> {
    auth::admin(&st.auth, &headers)?;
    let (summaries, rejected) = st.registry.summaries();
    let cfg = st.policies.config();
    let mut vendors = Vec::with_capacity(summaries.len());
    for s in summaries {
        let policy = match st.registry.get(&s.id) {
            Some(p) => st.policies.for_plugin(&p),
            None => continue,
        };
        let breaker = st.breakers.snapshot(&s.id).await.ok().map(BreakerView::from);
        // What the vendor taught; the configured rate if the limiter cannot say.
        let learned = st
            .limiter
            .learned(&s.id, policy.quota.rate)
            .await
            .unwrap_or(crate::limits::Learned::configured(policy.quota.rate));
        let (ungranted_hosts, config) = match st.registry.get(&s.id) {
            Some(p) => (
                crate::plugins::needs::ungranted_hosts(&p.info, &policy.call.grants),
                p.info
                    .config
                    .iter()
                    .map(|k| ConfigKeyView {
                        name: k.name.clone(),
                        required: k.required,
                        secret: k.secret,
                        description: k.description.clone(),
                        set: policy.call.config.get(&k.name).is_some_and(|v| !v.is_empty()),
                    })
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        vendors.push(VendorView {
            ungranted_hosts,
            config,
            limits: Limits {
                rate_per_second: policy.quota.rate,
                learned_rate_per_second: learned.rate,
                paused_for_ms: learned.paused_for.map(|d| d.as_millis() as u64),
                burst: policy.quota.burst,
                max_in_flight: policy.max_in_flight,
                timeout_ms: policy.call.timeout.as_millis() as u64,
                memory_mb: (policy.call.memory_cap_bytes >> 20) as u64,
                max_attempts: policy.max_attempts,
                allowed_hosts: cfg.vendor(&s.id).allowed_hosts.unwrap_or_default(),
            },
            plugin: s.into(),
            breaker,
            usage: None,
        });
    }
    // Usage and quotas come from the store: without it the rest still shows.
    let ids: Vec<String> = vendors.iter().map(|v| v.plugin.id.clone()).collect();
    let keys = match super::vendor_usage::read(&st, &ids, crate::model::now_ms()).await {
        Ok(mut acc) => {
            for v in &mut vendors {
                v.usage = acc.usage.remove(&v.plugin.id);
            }
            Some(acc.keys)
        }
        Err(e) => {
            tracing::warn!(error = %e, "GET /vendors: usage and quotas unavailable");
            None
        }
    };
    Ok(axum::Json(VendorList {
        vendors,
        rejected: rejected.into_iter().map(RejectedView::from).collect(),
        history: st.registry.history().into_iter().map(PluginEventView::from).collect(),
        keys,
    }))
}
