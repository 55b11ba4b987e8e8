//! Lines in the host's structured log, tagged by the host with the vendor and
//! the current request id. Do not log secrets or personal data: log lines are
//! not cleaned.

use crate::{Level, sys};

/// One line at `level`.
pub fn log(level: Level, message: &str) {
    sys::log(level, message)
}

pub fn trace(message: &str) {
    log(Level::Trace, message)
}

pub fn debug(message: &str) {
    log(Level::Debug, message)
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

pub fn error(message: &str) {
    log(Level::Error, message)
}
