//! Crash points for tests: `POSTMASTER_BOT_FAILPOINT=<name>` makes the process abort at that
//! point, as a SIGKILL would (no destructors, no flushing). Compiled out of release builds.

/// Aborts the process when the named failpoint is armed (debug builds only).
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("POSTMASTER_BOT_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
