//! Kubernetes' crash-loop back-off, computed from what CRI reports.
//!
//! The kubelet keeps its back-off in memory: the first restart is
//! immediate, then it waits 10 s, 20 s, 40 s … up to 5 min, and starts over
//! once a container has run for 10 min. We get the same sequence without
//! memory by writing the back-off armed for an instance into an annotation
//! of that instance ([`super::ANNOTATION_BACKOFF`]): when it exits, its own
//! annotation and its run time say how long to wait and what to arm next.
//! A restarted agent therefore neither forgets a crash loop nor restarts a
//! crashing container early.

use std::time::Duration;

/// The first non-zero back-off.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The back-off never grows beyond this.
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran at least this long starts the sequence over.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// What to do once an instance armed with `armed` exited after running for
/// `ran_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterExit {
    /// How long after the exit the next instance may start.
    pub wait: Duration,
    /// The back-off to arm on that next instance.
    pub next: Duration,
}

/// The back-off rule. An instance armed with zero (the first one, or one
/// after a reset) restarts at once; otherwise it waits what it was armed
/// with, and the next one is armed with twice that, capped at [`MAX`].
pub fn after_exit(armed: Duration, ran_for: Duration) -> AfterExit {
    if armed.is_zero() || ran_for >= RESET_AFTER {
        AfterExit {
            wait: Duration::ZERO,
            next: INITIAL,
        }
    } else {
        AfterExit {
            wait: armed,
            next: (armed * 2).min(MAX),
        }
    }
}

/// Formats a back-off the way Go prints a `time.Duration` in kubelet
/// messages: `10s`, `1m20s`, `5m0s`.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// Parses the annotation back; anything unreadable counts as "no back-off
/// armed", which at worst restarts one crash early.
pub fn parse_annotation(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .map(|d| d.min(MAX))
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_sequence(crashes: usize, ran_for: Duration) -> Vec<u64> {
        let mut armed = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..crashes {
            let step = after_exit(armed, ran_for);
            waits.push(step.wait.as_secs());
            armed = step.next;
        }
        waits
    }

    #[test]
    fn follows_the_kubelet_sequence() {
        assert_eq!(
            run_sequence(8, Duration::from_secs(1)),
            vec![0, 10, 20, 40, 80, 160, 300, 300]
        );
    }

    #[test]
    fn resets_after_ten_minutes_of_running() {
        let long = after_exit(Duration::from_secs(160), RESET_AFTER);
        assert_eq!(long.wait, Duration::ZERO);
        assert_eq!(long.next, INITIAL);
        let short = after_exit(
            Duration::from_secs(160),
            RESET_AFTER - Duration::from_secs(1),
        );
        assert_eq!(short.wait, Duration::from_secs(160));
        assert_eq!(short.next, MAX);
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(MAX), "5m0s");
    }

    #[test]
    fn unreadable_annotations_mean_no_backoff() {
        assert_eq!(parse_annotation(None), Duration::ZERO);
        assert_eq!(parse_annotation(Some("x")), Duration::ZERO);
        assert_eq!(parse_annotation(Some("20")), Duration::from_secs(20));
        assert_eq!(parse_annotation(Some("99999")), MAX);
    }
}
