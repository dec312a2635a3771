//! Who is asking: sessions in HttpOnly, SameSite=Strict cookies, each with its own CSRF token;
//! users from a file of argon2 hashes; the user a trusted reverse proxy names; failed logins
//! counted per address and refused for a while after too many.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// How long a session lives without being used.
const SESSION_IDLE_SECS: i64 = 12 * 3600;
/// Failed logins from one address within `FAILURE_WINDOW_SECS` before it is refused.
const MAX_FAILURES: usize = 5;
const FAILURE_WINDOW_SECS: i64 = 15 * 60;
/// Sessions kept at most: a flood of anonymous visits cannot grow memory without bound.
const MAX_SESSIONS: usize = 10_000;

pub const COOKIE: &str = "pmb_session";

/// Why the users file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read the users file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {why}")]
    Line {
        path: String,
        line: usize,
        why: String,
    },
    #[error("cannot write the users file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The console's users: name and argon2 hash.
#[derive(Debug, Default, Clone)]
pub struct Users {
    hashes: HashMap<String, String>,
}

/// A user name: letters, digits and `._@-`, so that it shows and logs as itself.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| UsersError::Line {
                path: shown.clone(),
                line: i + 1,
                why: why.to_string(),
            };
            let (name, hash) = line.split_once(':').ok_or_else(|| bad("not NAME:HASH"))?;
            if !valid_name(name) {
                return Err(bad("the name may hold letters, digits and . _ @ - only"));
            }
            PasswordHash::new(hash).map_err(|_| bad("the hash is not a PHC string (argon2)"))?;
            hashes.insert(name.to_string(), hash.to_string());
        }
        Ok(Users { hashes })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether the password is this user's. An unknown user costs a hash as well, so the time
    /// taken does not tell which names exist.
    pub fn check(&self, name: &str, password: &str) -> bool {
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ";
        let (hash, known) = match self.hashes.get(name) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY, false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    }
}

/// Adds (or replaces) a user in the users file, written atomically with mode 600.
pub fn add_user(path: &Path, name: &str, password: &str) -> Result<(), UsersError> {
    if !valid_name(name) {
        return Err(UsersError::Invalid(format!(
            "`{name}` is not a user name: letters, digits and . _ @ - only, at most 64"
        )));
    }
    if password.chars().count() < 12 {
        return Err(UsersError::Invalid(
            "the password must have at least 12 characters".to_string(),
        ));
    }
    let shown = path.display().to_string();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| UsersError::Invalid(format!("no randomness: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Invalid(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| UsersError::Invalid(e.to_string()))?
        .to_string();
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(UsersError::Read {
                path: shown,
                source,
            })
        }
    };
    let mut text: String = existing
        .lines()
        .filter(|l| l.split_once(':').map(|(n, _)| n) != Some(name))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{name}:{hash}\n"));
    let write = |source| UsersError::Write {
        path: shown.clone(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new("."))).map_err(write)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(write)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
            .map_err(write)?;
    }
    tmp.persist(path).map_err(|e| write(e.error))?;
    Ok(())
}

/// A visitor's session: who (once logged in) and the token every form must carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: Option<String>,
    pub csrf: String,
    last_seen: i64,
}

/// Random hex of 32 bytes.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    // NOTE: without the OS's randomness no session can be safe; there is nothing to fall back to.
    getrandom::fill(&mut bytes).unwrap_or_else(|e| panic!("no randomness from the OS: {e}"));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two tokens are equal, in time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Vec<i64>>>,
}

impl Sessions {
    /// The session of a cookie value, refreshed; `None` when unknown or expired.
    pub fn get(&self, id: &str, now: i64) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let session = map.get_mut(id)?;
        if now - session.last_seen > SESSION_IDLE_SECS {
            map.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// A new session (its cookie value and itself).
    pub fn create(&self, user: Option<String>, now: i64) -> (String, Session) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| now - s.last_seen <= SESSION_IDLE_SECS);
            if map.len() >= MAX_SESSIONS {
                // The oldest anonymous sessions go first.
                let mut anonymous: Vec<(String, i64)> = map
                    .iter()
                    .filter(|(_, s)| s.user.is_none())
                    .map(|(k, s)| (k.clone(), s.last_seen))
                    .collect();
                anonymous.sort_by_key(|(_, t)| *t);
                for (k, _) in anonymous.into_iter().take(MAX_SESSIONS / 10) {
                    map.remove(&k);
                }
            }
        }
        let session = Session {
            user,
            csrf: token(),
            last_seen: now,
        };
        let id = token();
        map.insert(id.clone(), session.clone());
        (id, session)
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Whether this address has failed too often lately to be let try again.
    pub fn locked_out(&self, ip: IpAddr, now: i64) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let list = failures.entry(ip).or_default();
        list.retain(|t| now - t < FAILURE_WINDOW_SECS);
        list.len() >= MAX_FAILURES
    }

    pub fn failed(&self, ip: IpAddr, now: i64) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() > MAX_SESSIONS {
            failures.retain(|_, l| l.iter().any(|t| now - t < FAILURE_WINDOW_SECS));
        }
        failures.entry(ip).or_default().push(now);
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_added_to_the_file_logs_in_with_that_password_only() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("users");
        add_user(&path, "alice", "correct horse battery").expect("added");
        add_user(&path, "bob", "another long password").expect("added");
        add_user(&path, "alice", "a changed long password").expect("replaced");
        let users = Users::load(&path).expect("loads");
        assert!(users.check("alice", "a changed long password"));
        assert!(!users.check("alice", "correct horse battery"));
        assert!(users.check("bob", "another long password"));
        assert!(!users.check("carol", "another long password"));
        assert!(add_user(&path, "x y", "long enough password").is_err());
        assert!(add_user(&path, "eve", "short").is_err());
        std::fs::write(&path, "alice:not-a-hash\n").expect("write");
        let err = Users::load(&path).expect_err("bad line");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn too_many_failed_logins_lock_the_address_out_for_a_while() {
        let s = Sessions::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        for t in 0..MAX_FAILURES as i64 {
            assert!(!s.locked_out(ip, t));
            s.failed(ip, t);
        }
        assert!(s.locked_out(ip, 10));
        assert!(!s.locked_out(ip, FAILURE_WINDOW_SECS + 10));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("ab", "abc"));
    }
}
