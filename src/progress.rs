//! Progress on stderr: a live bar on a terminal; where stderr is a file or a pipe (a run under
//! `nohup`, CI, a scheduler's log), the bar's state as one plain line at most once a minute,
//! so that a long step in a log shows it is moving and a short one writes nothing.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How often a bar writes its line where stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// A progress bar of `len` steps named `what`.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), draw_target());
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A spinner for work of unknown length.
pub fn spinner(what: &str) -> ProgressBar {
    let s = ProgressBar::with_draw_target(None, draw_target());
    s.set_style(ProgressStyle::default_spinner());
    s.set_message(what.to_string());
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

fn draw_target() -> ProgressDrawTarget {
    use std::io::IsTerminal;
    if io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::term_like(Box::new(LogLines::new(LOG_EVERY)))
    }
}

/// A [`TermLike`] that keeps only the latest drawing and writes it to stderr as one line when
/// `every` has passed since the last line written (or since it was made).
#[derive(Debug)]
struct LogLines {
    every: Duration,
    /// The drawing in progress and when a line was last written (at first: made).
    state: Mutex<(String, Instant)>,
}

impl LogLines {
    fn new(every: Duration) -> Self {
        Self::made_at(every, Instant::now())
    }

    fn made_at(every: Duration, t: Instant) -> Self {
        LogLines {
            every,
            state: Mutex::new((String::new(), t)),
        }
    }

    /// The line to write now, if any (the drawing is consumed either way).
    fn take_due(&self, now: Instant) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::mem::take(&mut st.0);
        let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let due = now.duration_since(st.1) >= self.every;
        if line.is_empty() || !due {
            return None;
        }
        st.1 = now;
        Some(line)
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)?;
        self.write_str(" ")
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        if let Some(line) = self.take_due(Instant::now()) {
            eprintln!("{line}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_gets_one_line_per_interval_and_nothing_from_short_work() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let log = LogLines::made_at(s(60), t0);
        log.write_line("  relearning [=>   ] 1/40").unwrap();
        assert_eq!(log.take_due(t0 + s(5)), None, "short work writes nothing");
        log.write_line("  relearning [=>   ] 2/40").unwrap();
        assert_eq!(
            log.take_due(t0 + s(61)).as_deref(),
            Some("relearning [=> ] 2/40")
        );
        log.write_line("relearning 3/40").unwrap();
        assert_eq!(log.take_due(t0 + s(100)), None);
        // A drawing not written is dropped: the next line is the latest state.
        log.write_line("relearning 4/40").unwrap();
        assert_eq!(
            log.take_due(t0 + s(122)).as_deref(),
            Some("relearning 4/40")
        );
        // A cleared bar (nothing drawn) writes nothing.
        assert_eq!(log.take_due(t0 + s(300)), None);
    }
}
