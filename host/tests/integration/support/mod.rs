//! Test harness: real servers (Redis, the nx-27017 Mongo stand-in), real
//! compiled plugins, and the service itself on free ports.

#![allow(dead_code)]

pub mod app;
pub mod servers;
