// SPDX-License-Identifier: Apache-2.0
//! Progress on stderr: numbered step lines (also when stderr is a log file)
//! and byte bars that indicatif draws only on a terminal.

use std::cell::Cell;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    n: Cell<usize>,
    start: Instant,
    quiet: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            n: Cell::new(0),
            start: Instant::now(),
            quiet: false,
        }
    }

    /// No output at all (library use, tests).
    pub fn quiet() -> Progress {
        Progress {
            quiet: true,
            ..Progress::new()
        }
    }

    pub fn step(&self, what: &str) {
        self.n.set(self.n.get() + 1);
        if !self.quiet {
            // No "of N": how many steps a build has depends on the recipe.
            // The time is since the start (when the step began), not its length.
            eprintln!(
                "airlock: [{}] {what} (at {:.1}s)",
                self.n.get(),
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    pub fn note(&self, what: &str) {
        if !self.quiet {
            eprintln!("airlock: note: {what}");
        }
    }

    /// A byte bar; `len` 0 means unknown length (a spinner with a count).
    pub fn bytes(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(
            Some(len).filter(|l| *l > 0),
            ProgressDrawTarget::stderr(),
        );
        let style = if len > 0 {
            ProgressStyle::with_template(
                "  {msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
        } else {
            ProgressStyle::with_template("  {spinner} {msg:24!} {bytes} {bytes_per_sec}")
        };
        bar.set_style(style.expect("valid template").progress_chars("=> "));
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    pub fn finish(&self) {
        if !self.quiet {
            eprintln!(
                "airlock: done in {:.1}s",
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}
