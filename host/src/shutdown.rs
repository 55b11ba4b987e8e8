//! The stop signal every background loop watches: a `watch` channel that
//! turns true once, when the process starts to shut down.

use tokio::sync::watch;
use tokio::time::Interval;

/// Waits for the next tick of `tick`, or for the stop signal. True to go on;
/// false once stopping (or if the signal's sender is gone).
pub async fn next_tick(tick: &mut Interval, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tick.tick() => {}
        changed = stop.changed() => {
            if changed.is_err() {
                return false;
            }
        }
    }
    !*stop.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn ticks_until_stopped_or_orphaned() {
        let (tx, mut rx) = watch::channel(false);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        assert!(next_tick(&mut tick, &mut rx).await);
        tx.send(true).unwrap();
        assert!(!next_tick(&mut tick, &mut rx).await);
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        let mut slow = tokio::time::interval(Duration::from_secs(3600));
        slow.tick().await;
        assert!(!next_tick(&mut slow, &mut rx).await, "a dropped sender must end the loop, not spin");
    }
}
