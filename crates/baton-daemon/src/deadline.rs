//! The sleep of a daemon's timer task: until the next deadline of a sans-IO
//! engine, or earlier when an input armed an earlier one.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

/// Shared between the timer task (which sleeps) and whoever feeds the
/// engine (which re-arms after each input).
#[derive(Debug, Default)]
pub struct DeadlineTimer {
    wake: Notify,
    /// What the timer task sleeps for now; `None` while it is awake.
    armed: Mutex<Option<Instant>>,
}

impl DeadlineTimer {
    /// After an input: wakes the sleeper only if `next` comes before the
    /// deadline it sleeps for (most inputs arm later deadlines: no wake-up).
    pub fn rearm(&self, next: Option<Instant>) {
        let armed = *self.armed.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_some_and(|n| armed.is_none_or(|a| n < a)) {
            self.wake.notify_one();
        }
    }

    /// Sleeps until `next` (forever if `None`); returns `true` when it is
    /// due, `false` when re-armed earlier (poll the engine again).
    pub async fn sleep(&self, next: Option<Instant>) -> bool {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = next;
        let due = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let due = tokio::select! {
            _ = due => true,
            _ = self.wake.notified() => false,
        };
        // Until the caller sleeps again (after polling the engine), every
        // re-arm wakes it: a deadline armed meanwhile is not missed.
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn an_earlier_deadline_is_never_slept_through() {
        let t = Arc::new(DeadlineTimer::default());
        let far = Instant::now() + Duration::from_secs(3600);
        let sleeper = tokio::spawn({
            let t = Arc::clone(&t);
            async move { t.sleep(Some(far)).await }
        });
        // Whether or not the sleeper has armed yet, an earlier deadline
        // reaches it (before it arms, any re-arm is kept as a wake-up).
        t.rearm(Some(Instant::now()));
        let woke = tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woken well before the far deadline")
            .expect("sleeper task");
        assert!(!woke, "woken early, not due");
        assert!(
            t.sleep(Some(Instant::now())).await,
            "a past deadline is due at once"
        );
    }
}
