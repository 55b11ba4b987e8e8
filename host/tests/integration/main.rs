//! The one integration-test binary: every surface of the service against
//! real servers, real HTTP and real compiled plugins.

mod support;

mod backends;
mod config;
mod contract;
mod faults;
mod lifecycle;
mod limits;
mod loadtest;
mod pipeline;
mod plugin_runtime;
mod recovery;
mod resilience;
mod security;
