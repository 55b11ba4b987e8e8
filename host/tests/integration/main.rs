//! The one integration-test binary: every surface of the service against
//! real servers, real HTTP and real compiled plugins.

mod support;

mod backends;
mod cluster;
mod config;
mod contract;
mod fairness;
mod faults;
mod job_control;
mod key_limits;
mod learned_limits;
mod lifecycle;
mod limits;
mod loadtest;
mod pipeline;
mod plugin_runtime;
mod recovery;
mod resilience;
mod result_cache;
mod security;
mod store_init;
mod traces;
mod ui;
mod usage;
mod waiting;
