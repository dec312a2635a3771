//! How the log looks where it goes: colour for a person at a terminal, plain text for a file or
//! a pipe, and no timestamps of our own in systemd's journal, which stamps every line itself.

use std::ffi::OsStr;

/// The log's dress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStyle {
    /// ANSI colours and emphasis.
    pub ansi: bool,
    /// A timestamp at the start of each text line.
    pub timestamps: bool,
}

/// Colour only on a terminal and never when `NO_COLOR` is set to anything (no-color.org);
/// timestamps unless the journal takes the lines.
pub fn style(stderr_is_terminal: bool, no_color: Option<&OsStr>, to_journal: bool) -> LogStyle {
    let no_color = no_color.is_some_and(|v| !v.is_empty());
    LogStyle {
        ansi: stderr_is_terminal && !no_color && !to_journal,
        timestamps: !to_journal,
    }
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM` to `DEVICE:INODE` of
/// the socket it connected, and a child whose stderr was redirected elsewhere inherits the
/// variable, so it only counts when stderr is that very socket (sd_journal_stream_fd(3)).
pub fn stderr_is_journal(journal_stream: Option<&OsStr>) -> bool {
    let Some(expected) = journal_stream.and_then(|v| parse_journal_stream(v.to_str()?)) else {
        return false;
    };
    stderr_identity().is_some_and(|actual| actual == expected)
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.trim().split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

#[cfg(unix)]
fn stderr_identity() -> Option<(u64, u64)> {
    let stat = rustix::fs::fstat(std::io::stderr()).ok()?;
    Some((stat.st_dev as u64, stat.st_ino as u64))
}

#[cfg(not(unix))]
fn stderr_identity() -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_a_person_at_a_terminal() {
        let at_terminal = style(true, None, false);
        assert_eq!(
            at_terminal,
            LogStyle {
                ansi: true,
                timestamps: true
            }
        );
        assert!(!style(false, None, false).ansi, "a file or a pipe");
        assert!(!style(true, Some(OsStr::new("1")), false).ansi, "NO_COLOR");
        assert!(
            style(true, Some(OsStr::new("")), false).ansi,
            "an empty NO_COLOR does not count"
        );
    }

    #[test]
    fn the_journal_gets_neither_colour_nor_timestamps() {
        assert_eq!(
            style(true, None, true),
            LogStyle {
                ansi: false,
                timestamps: false
            }
        );
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:b"), None);
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some(OsStr::new("garbage"))));
        // Not the test's stderr (no inode is 0).
        assert!(!stderr_is_journal(Some(OsStr::new("0:0"))));
    }
}
