// SPDX-License-Identifier: Apache-2.0
//! Runs transfers on up to `-j` threads, each with its own progress bar on
//! stderr (drawn on a terminal only; a log gets one line per transfer).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Runs `work` for every item on `jobs` threads and returns the results in
/// item order. `label` names an item on its bar and in the log line;
/// `done` describes a finished result for the log ("12 MiB in 1.2s").
pub fn run<T, R>(
    jobs: usize,
    quiet: bool,
    items: Vec<T>,
    label: impl Fn(&T) -> String + Sync,
    work: impl Fn(&T, &ProgressBar) -> R + Sync,
    done: impl Fn(&R) -> Option<String> + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let multi = MultiProgress::with_draw_target(if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let queue: Mutex<VecDeque<usize>> = Mutex::new((0..items.len()).collect());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let threads = jobs.clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some(i) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let item = &items[i];
                let name = label(item);
                let bar = multi.add(bar(&name));
                let start = Instant::now();
                let r = work(item, &bar);
                bar.finish_and_clear();
                multi.remove(&bar);
                if !quiet {
                    if let Some(line) = done(&r) {
                        let secs = start.elapsed().as_secs_f64();
                        multi.suspend(|| eprintln!("airlock: {name}: {line} ({secs:.1}s)"));
                    }
                }
                results.lock().expect("results")[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

fn bar(name: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "  {msg:32!} [{bar:24}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Bytes as a short human figure for log lines.
pub fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_keep_item_order_and_respect_jobs() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<u64> = (0..12).collect();
        let out = run(
            3,
            true,
            items,
            |i| format!("item {i}"),
            |i, _bar| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5 * (12 - i)));
                running.fetch_sub(1, Ordering::SeqCst);
                i * 10
            },
            |_| None,
        );
        assert_eq!(out, (0..12).map(|i| i * 10).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(peak.load(Ordering::SeqCst) >= 2, "ran in parallel");
    }
}
