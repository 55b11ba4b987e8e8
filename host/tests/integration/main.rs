//! The one integration-test binary: every surface of the service against
//! real servers, real HTTP and real compiled plugins.

mod support;

mod backends;
mod limits;
mod pipeline;
