//! Hung-device detection shared by the virtio modules, without reading the clock on
//! the I/O path.

use std::time::{Duration, Instant};

/// Watches a queue for a stall: requests in flight and no completion for longer than
/// the I/O timeout.
///
/// The clock is read only every 1024 empty polls or after a sleep, never on the I/O
/// path: the first such check starts the stall clock, a later one past the deadline
/// reports the stall (so a hang is caught within the timeout plus one check interval).
#[derive(Debug, Default)]
pub(crate) struct StallClock {
    stalled_since: Option<Instant>,
    idle_polls: u32,
    /// The caller slept since the last poll: read the clock on the next empty one.
    pub waited: bool,
}

impl StallClock {
    /// Accounts one poll; `idle` is false after progress or with nothing in flight.
    /// Returns whether the queue has been stalled for longer than `io_timeout`.
    pub fn poll(&mut self, idle: bool, io_timeout: Duration) -> bool {
        if !idle {
            self.idle_polls = 0;
            self.stalled_since = None;
            return false;
        }
        self.idle_polls = self.idle_polls.wrapping_add(1);
        if self.idle_polls % 1024 != 0 && !std::mem::take(&mut self.waited) {
            return false;
        }
        let now = Instant::now();
        match self.stalled_since {
            None => {
                self.stalled_since = Some(now);
                false
            }
            Some(t) => now.duration_since(t) > io_timeout,
        }
    }
}

/// Checks a channel count and queue size against what the device offers.
pub(crate) fn check_queues(
    requested: u16,
    available: u16,
    size: u16,
    max_size: u16,
) -> vbdev_virtio::Result<()> {
    if requested > available {
        return Err(vbdev_virtio::Error::TooManyQueues {
            requested: requested.into(),
            available: available.into(),
        });
    }
    if size > max_size {
        return Err(vbdev_virtio::Error::QueueTooLarge {
            size: size.into(),
            max: max_size.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_resets_and_a_stall_is_reported_after_the_timeout() {
        let mut c = StallClock::default();
        let t = Duration::from_millis(20);
        // Empty polls without a sleep read the clock only every 1024th time.
        for _ in 0..1023 {
            assert!(!c.poll(true, t));
        }
        assert!(!c.poll(true, t), "the 1024th starts the clock");
        std::thread::sleep(Duration::from_millis(30));
        c.waited = true;
        assert!(
            c.poll(true, t),
            "a check after the timeout reports the stall"
        );
        assert!(!c.poll(false, t), "progress resets");
        c.waited = true;
        assert!(!c.poll(true, t));
    }

    #[test]
    fn queue_limits_are_checked() {
        assert!(check_queues(2, 2, 128, 128).is_ok());
        assert!(matches!(
            check_queues(3, 2, 128, 128),
            Err(vbdev_virtio::Error::TooManyQueues { .. })
        ));
        assert!(matches!(
            check_queues(1, 2, 256, 128),
            Err(vbdev_virtio::Error::QueueTooLarge { .. })
        ));
    }
}
