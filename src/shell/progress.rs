//! Progress of a long catch-up: a bar on an interactive terminal, a log line every few seconds
//! otherwise (systemd, CI, a pipe).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

/// Below this many messages a catch-up is quick: no bar, no periodic lines.
const SHOW_FROM: u64 = 2000;
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    read: u64,
    fetched: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// `total` is an estimate (the folder's message count, or the UID span to read).
    pub fn new(total: u64) -> Progress {
        let bar = (total >= SHOW_FROM && std::io::stderr().is_terminal()).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
            if let Ok(style) = ProgressStyle::with_template(
                "catch-up {bar:30} {pos}/{len} messages, {msg} ({per_sec}, {eta} left)",
            ) {
                bar.set_style(style);
            }
            bar
        });
        if total >= SHOW_FROM {
            info!(messages = total, "catching up");
        }
        let now = Instant::now();
        Progress {
            bar,
            total,
            read: 0,
            fetched: 0,
            started: now,
            last_line: now,
        }
    }

    /// `read` more headers were judged, `fetched` of them read whole.
    pub fn advance(&mut self, read: u64, fetched: u64) {
        self.read += read;
        self.fetched += fetched;
        if let Some(bar) = &self.bar {
            bar.set_position(self.read.min(self.total));
            bar.set_message(format!("{} read whole", self.fetched));
        } else if self.total >= SHOW_FROM && self.last_line.elapsed() >= LOG_EVERY {
            self.last_line = Instant::now();
            info!(
                read = self.read,
                of = self.total,
                fetched = self.fetched,
                "catch-up progress"
            );
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.read > 0 {
            info!(
                messages = self.read,
                fetched = self.fetched,
                seconds = format!("{:.2}", self.started.elapsed().as_secs_f64()),
                "caught up"
            );
        }
    }
}
