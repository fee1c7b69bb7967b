//! Stopping a job mid-render: the render loop checks its job's control between steps.

use std::sync::atomic::{AtomicU8, Ordering};

/// Why a job in hand must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The user or an admin cancelled it; the store has refunded it already.
    Cancelled,
    /// Its lease was lost: another worker may hold it now. Its output must be discarded.
    LeaseLost,
    /// The worker is shutting down past its grace period: give the job back.
    Shutdown,
}

/// Shared between the render thread and the tasks watching the job; the first stop wins.
#[derive(Debug, Default)]
pub struct Control {
    state: AtomicU8,
}

impl Control {
    pub fn stop(&self, why: Stop) {
        let code = match why {
            Stop::Cancelled => 1,
            Stop::LeaseLost => 2,
            Stop::Shutdown => 3,
        };
        let _ = self
            .state
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn stopped(&self) -> Option<Stop> {
        match self.state.load(Ordering::Acquire) {
            1 => Some(Stop::Cancelled),
            2 => Some(Stop::LeaseLost),
            3 => Some(Stop::Shutdown),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_wins() {
        let control = Control::default();
        assert_eq!(control.stopped(), None);
        control.stop(Stop::Cancelled);
        control.stop(Stop::Shutdown);
        assert_eq!(control.stopped(), Some(Stop::Cancelled));
    }
}
