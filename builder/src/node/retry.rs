// SPDX-License-Identifier: Apache-2.0
//! Bounded retries with exponential backoff (a join waits for a control
//! plane that may boot later than the worker).

use std::time::Duration;

use anyhow::Result;

use super::say;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all, at least one.
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub initial: Duration,
    /// The wait never grows beyond this.
    pub max: Duration,
}

impl Backoff {
    /// The wait after failed attempt `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The longest the attempts wait in all (not counting the attempts).
    pub fn total_wait(&self) -> Duration {
        (1..self.attempts.max(1)).map(|n| self.delay(n)).sum()
    }
}

/// Runs `attempt` until it succeeds or `b.attempts` have failed, waiting
/// with `sleep` in between. Each failure is logged; the last is returned.
pub fn retry<T>(
    b: &Backoff,
    what: &str,
    mut attempt: impl FnMut(u32) -> Result<T>,
    mut sleep: impl FnMut(Duration),
) -> Result<T> {
    let attempts = b.attempts.max(1);
    let mut n = 1;
    loop {
        match attempt(n) {
            Ok(v) => return Ok(v),
            Err(e) if n >= attempts => {
                return Err(e.context(format!("{what}: giving up after {attempts} attempts")));
            }
            Err(e) => {
                let wait = b.delay(n);
                say(format!(
                    "{what}: attempt {n} of {attempts} failed: {e:#}; trying again in {}s",
                    wait.as_secs()
                ));
                sleep(wait);
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    const B: Backoff = Backoff {
        attempts: 6,
        initial: Duration::from_secs(5),
        max: Duration::from_secs(30),
    };

    #[test]
    fn delays_double_up_to_the_cap() {
        let d: Vec<u64> = (1..=6).map(|n| B.delay(n).as_secs()).collect();
        assert_eq!(d, [5, 10, 20, 30, 30, 30]);
        assert_eq!(B.total_wait(), Duration::from_secs(5 + 10 + 20 + 30 + 30));
        let huge = Backoff {
            attempts: 100,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        assert_eq!(huge.delay(99), Duration::from_secs(60));
    }

    #[test]
    fn retries_until_success_then_stops() {
        let mut slept = Vec::new();
        let mut calls = 0;
        let v = retry(
            &B,
            "joining",
            |n| {
                calls += 1;
                if n < 3 {
                    Err(anyhow!("connection refused"))
                } else {
                    Ok(n)
                }
            },
            |d| slept.push(d.as_secs()),
        )
        .unwrap();
        assert_eq!((v, calls), (3, 3));
        assert_eq!(slept, [5, 10]);
    }

    #[test]
    fn gives_up_after_the_bound_with_the_last_error() {
        let mut slept = 0;
        let err = retry(
            &B,
            "joining",
            |n| Err::<(), _>(anyhow!("refused #{n}")),
            |_| slept += 1,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("giving up after 6 attempts") && msg.contains("refused #6"),
            "{msg}"
        );
        assert_eq!(slept, 5);
        let once = Backoff { attempts: 0, ..B };
        assert!(retry(
            &once,
            "x",
            |_| Err::<(), _>(anyhow!("no")),
            |_| panic!("no sleep")
        )
        .is_err());
    }
}
