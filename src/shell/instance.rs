//! One daemon per state store. Two daemons on one store would each read the mailbox and each
//! decide to answer the same ticket; the store's transactions keep its rows whole, not the
//! decisions apart. So `run` holds an exclusive lock on a file beside the store for as long
//! as it lives, taken before the store is opened or migrated; a second `run` stops at once and
//! says which process holds it. Other commands (`cases`, `queue`, `teach` ...) do not take it:
//! they are short transactions beside the daemon, which SQLite orders.
//!
//! The lock is `flock(2)` on `<store>.lock`: the kernel drops it when the process ends, however
//! it ends, so a crash never leaves a stale lock (the pid in the file is only for the message).

use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("another postmaster-bot ({holder}) runs on this store {store}")]
    Held { holder: String, store: String },
    #[error("failed to lock the state store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Held while the daemon runs; dropping it (or the process ending) releases the store.
#[derive(Debug)]
pub struct InstanceLock {
    _file: std::fs::File,
}

/// The lock file of a store.
pub fn lock_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the store's lock, or says who holds it.
pub fn lock(store: &Path) -> Result<InstanceLock, InstanceError> {
    let path = lock_path(store);
    let io = |source: std::io::Error| InstanceError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = open_private(&path).map_err(io)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            return Err(InstanceError::Held {
                holder: holder(&mut file),
                store: store.display().to_string(),
            })
        }
        Err(e) => return Err(io(e.into())),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(InstanceLock { _file: file })
}

/// "pid N" from the holder's lock file. A holder that has just taken the lock may not have
/// written its pid yet: a few short waits for it.
// Runs at start-up, before any async runtime exists.
#[allow(clippy::disallowed_methods)]
fn holder(file: &mut std::fs::File) -> String {
    for _ in 0..5 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            if let Ok(pid) = text.trim().parse::<u32>() {
                return format!("pid {pid}");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    "pid unknown".to_string()
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_dropped_one_is_free_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("state.sqlite3");
        let first = lock(&store).expect("free store");
        // flock locks belong to the open file: a second open in the same process is refused
        // as another process would be.
        match lock(&store) {
            Err(InstanceError::Held { holder, store: s }) => {
                assert_eq!(holder, format!("pid {}", std::process::id()));
                assert!(s.ends_with("state.sqlite3"), "{s}");
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = lock(&store).expect("released on drop");
        drop(again);
        assert_eq!(lock_path(&store), dir.path().join("state.sqlite3.lock"));
    }

    #[test]
    fn a_lock_file_that_cannot_be_made_is_an_error_naming_it() {
        let err = lock(Path::new("/nonexistent-dir/state.sqlite3")).expect_err("no such dir");
        assert!(
            err.to_string()
                .contains("/nonexistent-dir/state.sqlite3.lock"),
            "{err}"
        );
    }
}
