//! Logging into the host's log. Lines carry the plugin id; keep secrets out of them (a
//! plugin never holds one, but request data can be sensitive).
//!
//! ```ignore
//! portcullis_sdk::info!("choosing site {}", site);
//! ```

pub use crate::bindings::portcullis::provider::log::Level;

/// Sends one line to the host's log.
pub fn log(level: Level, message: &str) {
    crate::bindings::portcullis::provider::log::log(level, message);
}

#[macro_export]
macro_rules! trace { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Trace, &::std::format!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($t)*)) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($t)*)) } }
