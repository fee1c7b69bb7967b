//! Limits the store enforces; all configurable, with service defaults.

use chrono::Duration;

/// Caps, quotas and retry policy.
#[derive(Clone, Debug)]
pub struct Caps {
    /// Jobs one user may have running at once.
    pub running_per_user: i64,
    /// Jobs one user may have queued at once.
    pub queued_per_user: i64,
    /// Jobs one guild may have running at once, unless the guild row sets its own.
    pub running_per_guild: i64,
    /// Jobs one guild may have queued at once, unless the guild row sets its own.
    pub queued_per_guild: i64,
    /// Commands (jobs asked for) one user may issue per minute.
    pub commands_per_minute: i64,
    /// Images one user may have made or pending per UTC day.
    pub daily_images: i64,
    /// Fast-lane GPU time granted per period, in milliseconds.
    pub fast_ms_per_period: i64,
    /// Length of a quota period; periods are aligned to the Unix epoch.
    pub period: Duration,
    /// Attempts a job gets before it fails for good.
    pub max_attempts: i32,
    /// Wait before the first retry; doubled for every further attempt.
    pub retry_backoff: Duration,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            running_per_user: 3,
            queued_per_user: 10,
            running_per_guild: 20,
            queued_per_guild: 100,
            commands_per_minute: 20,
            daily_images: 400,
            fast_ms_per_period: 3_600_000,
            period: Duration::days(30),
            max_attempts: 3,
            retry_backoff: Duration::seconds(2),
        }
    }
}

impl Caps {
    /// Delay before the retry that follows failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: i32) -> Duration {
        let doublings = attempt.clamp(1, 16) - 1;
        self.retry_backoff * (1 << doublings)
    }
}
