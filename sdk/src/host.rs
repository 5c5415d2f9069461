//! Services the agent offers a policy: logging and the policy's own
//! configuration.
//!
//! In a WebAssembly component these call the `locus:policy/host` imports.
//! Compiled natively (unit tests, benchmarks, the agent's native baselines)
//! they read and write a per-thread test context instead, set up with
//! [`testing::with_config`](crate::testing::with_config) and read back with
//! [`testing::take_logs`](crate::testing::take_logs).

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Detail for the policy's author.
    Debug,
    /// Something an operator may want to know.
    Info,
    /// Something looks wrong but the policy carries on.
    Warn,
    /// The policy cannot do its job properly.
    Error,
}

/// Writes one line to the agent's log, tagged with the policy's name. The
/// agent cuts lines at 1 KiB and keeps at most 64 lines per call.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// The value of `key` in the configuration the policy was loaded with.
pub fn config(key: &str) -> Option<String> {
    imp::config(key)
}

/// The value of `key` parsed as `T`, or `default` when absent or malformed
/// (a malformed value is logged as a warning).
pub fn config_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match config(key) {
        None => default,
        Some(raw) => raw.trim().parse().unwrap_or_else(|_| {
            log(Level::Warn, &format!("config {key}={raw:?} is malformed; using the default"));
            default
        }),
    }
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::Level;
    use crate::__glue::host as wit;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message)
    }

    pub fn config(key: &str) -> Option<String> {
        wit::config(key)
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    pub use crate::testing::context::{config, log};
}
