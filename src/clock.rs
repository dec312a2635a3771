//! The only place that reads the wall clock; everything else gets the time passed in.

/// Now, as Unix seconds.
#[allow(clippy::disallowed_methods)]
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
