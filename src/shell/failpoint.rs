//! Crash points for tests: `POSTMASTER_BOT_FAILPOINT=<name>` makes the process abort at that
//! point, as a SIGKILL would (no destructors, no flushing); a stall point holds a thread there
//! for a test to kill. Compiled out of release builds.

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

/// Stops the calling thread for good at the named point, once per marker file:
/// `POSTMASTER_BOT_STALLPOINT=<name>:<marker>` (debug builds only). The first thread to reach
/// it creates the marker and sleeps; later ones (another process, after a failover) pass. A
/// test uses it to hold a process in the middle of a catch-up and kill it there.
#[inline]
// Blocking the thread (and the mailbox's runtime on it) is the point: a hung process.
#[allow(clippy::disallowed_methods)]
pub fn stall(name: &str) {
    #[cfg(debug_assertions)]
    if let Ok(armed) = std::env::var("POSTMASTER_BOT_STALLPOINT") {
        if let Some((point, marker)) = armed.split_once(':') {
            let first = point == name
                && std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(marker)
                    .is_ok();
            if first {
                eprintln!("stallpoint {name}: stalling");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
