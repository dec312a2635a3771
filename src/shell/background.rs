//! Threads that only use what the machine has to spare.
//!
//! Compiling every language's rules ahead of need takes as much CPU as the whole header pass of
//! a large catch-up. At the normal priority it took a core from the IMAP stream, the server and
//! the classifier, whose work cannot wait; at the lowest it runs while they wait on each other,
//! and a pattern a message needs before the warm-up reached it is compiled by the classifier
//! itself (`rules::LazyRegex`), as it would be with no warm-up at all.

use std::thread::JoinHandle;

/// Starts `work` on a thread of its own at the lowest scheduling priority (nice 19).
pub fn spawn<F>(name: &str, work: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_own_priority();
            work()
        })
}

/// Lowers the calling thread's priority, never the process's: Linux keeps a nice value per
/// thread, and `setpriority` on a thread id sets that thread's alone. Where that fails, the
/// work runs at the normal priority: slower catch-ups, nothing worse.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(thread), 19) {
            tracing::debug!(error = %e, "could not lower a background thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from `/proc/thread-self/stat` (field 19).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("procfs is mounted");
        // The command name (field 2) may hold spaces: count fields after its closing paren.
        let after = stat.rsplit_once(')').expect("stat has a command name").1;
        after
            .split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("stat has a nice field")
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn background_threads_run_at_the_lowest_priority_and_leave_the_caller_alone() {
        let before = own_nice();
        let handle = spawn("test-bg", || assert_eq!(own_nice(), 19)).expect("thread starts");
        handle.join().expect("the background thread saw nice 19");
        assert_eq!(own_nice(), before, "only the background thread was lowered");
    }
}
