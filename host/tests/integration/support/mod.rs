//! Test harness: real servers (Redis, the nx-27017 Mongo stand-in), real
//! compiled plugins, the service itself on free ports, and a TCP proxy that
//! breaks connections on demand.

#![allow(dead_code)]

pub mod app;
pub mod proxy;
pub mod servers;
