//! The boot timer: a guest writes byte 123 to port 0x3f0 when it is up (the Firecracker
//! convention), and the VMM records how long that took from its own start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub const BOOT_DONE: u8 = 123;

pub struct BootTimer {
    start: Instant,
    /// Microseconds from VMM start to the first boot-done write; 0 until then.
    first_us: AtomicU64,
}

impl BootTimer {
    pub fn new(start: Instant) -> BootTimer {
        BootTimer {
            start,
            first_us: AtomicU64::new(0),
        }
    }

    pub fn write(&self, value: u8) {
        if value != BOOT_DONE {
            return;
        }
        let us = (self.start.elapsed().as_micros() as u64).max(1);
        if self
            .first_us
            .compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(target: "boot_timer", "guest boot done after {us} us");
        }
    }

    pub fn boot_done_us(&self) -> Option<u64> {
        match self.first_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_byte_123_marks_boot_done_and_only_the_first_counts() {
        let timer = BootTimer::new(Instant::now());
        timer.write(7);
        assert_eq!(timer.boot_done_us(), None);
        timer.write(BOOT_DONE);
        let first = timer.boot_done_us().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        timer.write(BOOT_DONE);
        assert_eq!(timer.boot_done_us(), Some(first));
    }
}
