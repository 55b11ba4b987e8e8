//! Rate-limit asks that go to Redis together: asks for one vendor's limit
//! that arrive while one is in flight wait, and the next round trip asks
//! for all of them at once (the GCRA script grants as many as the limit
//! allows now and one wait for the rest). Under load one round trip serves
//! many calls; idle, each ask goes out at once, alone (issue 24: fewer
//! round trips per job).
//!
//! No task is spawned: the caller whose ask goes out leads the round trip
//! for those queued behind it when it started, answers them, and hands the
//! lead to the first one queued since. A leader dropped mid-flight (its job
//! cancelled) still hands the lead on; those it carried ask again.
//! Written here because batching crates hold a task and a timer per batch,
//! which is what this avoids (the same reasoning as `crate::batch`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::LimitError;

/// An ask's answer: None to go now, Some(wait) to come back after it.
pub type Answer = Result<Option<Duration>, LimitError>;

/// What a queued ask is told.
enum Turn {
    Answer(Answer),
    /// Lead the next round trip (for itself and those queued then).
    Lead,
}

/// One key's line: whether a round trip is out, and who waits for the next.
#[derive(Default)]
struct Line {
    flying: bool,
    queued: VecDeque<oneshot::Sender<Turn>>,
}

/// Asks in line per key (bounded by the keys asked at once: a key's entry
/// goes when its line is empty).
pub struct Together<K> {
    lines: Mutex<HashMap<K, Line>>,
}

impl<K> Default for Together<K> {
    fn default() -> Self {
        Together { lines: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone> Together<K> {
    /// Asks for one call under `key`. `ask(n)` makes the round trip for n
    /// calls and returns how many may go now and the wait of the rest; the
    /// leader is served first, then the others in the order they came.
    pub async fn ask<F, Fut>(&self, key: &K, ask: F) -> Answer
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<(usize, Duration), LimitError>>,
    {
        loop {
            let queued = {
                let mut lines = self.lock();
                let line = lines.entry(key.clone()).or_default();
                if line.flying {
                    let (tx, rx) = oneshot::channel();
                    line.queued.push_back(tx);
                    Some(rx)
                } else {
                    line.flying = true;
                    None
                }
            };
            if let Some(rx) = queued {
                let mut waiting = Queued { owner: self, key, rx: Some(rx) };
                let Some(rx) = waiting.rx.as_mut() else { continue };
                let turn = rx.await;
                waiting.rx = None;
                match turn {
                    Ok(Turn::Answer(a)) => return a,
                    Ok(Turn::Lead) => {}
                    // The round trip it was in was abandoned: ask again.
                    Err(_) => continue,
                }
            }
            let mut flight = Flight { owner: self, key, carried: self.take_queued(key) };
            let answer = ask(1 + flight.carried.len()).await;
            return flight.answer(answer);
        }
    }

    /// The first ask still waiting leads next; none: the line is idle.
    fn hand_on(&self, key: &K) {
        let mut lines = self.lock();
        let Some(line) = lines.get_mut(key) else { return };
        while let Some(tx) = line.queued.pop_front() {
            if tx.send(Turn::Lead).is_ok() {
                return;
            }
        }
        lines.remove(key);
    }

    fn take_queued(&self, key: &K) -> Vec<oneshot::Sender<Turn>> {
        self.lock().get_mut(key).map(|l| l.queued.drain(..).collect()).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Line>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A round trip out for its leader and the asks it carries. Dropped
/// (answered or not), it hands the lead to the next ask in line.
struct Flight<'a, K: Eq + Hash + Clone> {
    owner: &'a Together<K>,
    key: &'a K,
    carried: Vec<oneshot::Sender<Turn>>,
}

impl<K: Eq + Hash + Clone> Flight<'_, K> {
    /// Tells the carried asks their part of `answer`; returns the leader's.
    fn answer(&mut self, answer: Result<(usize, Duration), LimitError>) -> Answer {
        match answer {
            Ok((granted, wait)) => {
                let turn = |i: usize| if i < granted { None } else { Some(wait) };
                for (i, tx) in self.carried.drain(..).enumerate() {
                    let _ = tx.send(Turn::Answer(Ok(turn(i + 1))));
                }
                Ok(turn(0))
            }
            Err(e) => {
                for tx in self.carried.drain(..) {
                    let _ = tx.send(Turn::Answer(Err(LimitError::Other(e.to_string()))));
                }
                Err(e)
            }
        }
    }
}

impl<K: Eq + Hash + Clone> Drop for Flight<'_, K> {
    fn drop(&mut self) {
        self.owner.hand_on(self.key);
    }
}

/// An ask waiting in line. Dropped (its job cancelled) after it was told
/// to lead but before it could, it hands the lead on.
struct Queued<'a, K: Eq + Hash + Clone> {
    owner: &'a Together<K>,
    key: &'a K,
    rx: Option<oneshot::Receiver<Turn>>,
}

impl<K: Eq + Hash + Clone> Drop for Queued<'_, K> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Turn::Lead) = rx.try_recv() {
                self.owner.hand_on(self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A limit of `left` calls in all; each round trip takes 20 ms.
    struct Fake {
        left: AtomicUsize,
        trips: AtomicUsize,
        asked: AtomicUsize,
    }

    impl Fake {
        async fn ask(&self, n: usize) -> Result<(usize, Duration), LimitError> {
            self.trips.fetch_add(1, Ordering::SeqCst);
            self.asked.fetch_add(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let left = self.left.load(Ordering::SeqCst);
            let granted = n.min(left);
            self.left.store(left - granted, Ordering::SeqCst);
            Ok((granted, Duration::from_millis(7)))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asks_in_flight_together_share_round_trips_and_each_gets_one_answer() {
        let fake = Arc::new(Fake { left: AtomicUsize::new(30), trips: 0.into(), asked: 0.into() });
        let together = Arc::new(Together::<&'static str>::default());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (fake, together) = (fake.clone(), together.clone());
            tasks.spawn(async move { together.ask(&"acme", |n| fake.ask(n)).await });
        }
        let answers: Vec<Answer> = tasks.join_all().await;
        let go = answers.iter().filter(|a| matches!(a, Ok(None))).count();
        let wait = answers.iter().filter(|a| matches!(a, Ok(Some(d)) if *d == Duration::from_millis(7))).count();
        assert_eq!((go, wait), (30, 20), "exactly the limit's calls go, the rest are told the wait");
        assert_eq!(fake.asked.load(Ordering::SeqCst), 50, "each ask counted once");
        let trips = fake.trips.load(Ordering::SeqCst);
        assert!(trips < 50, "asks in flight together went in fewer round trips ({trips})");
        assert!(together.lock().is_empty(), "an idle line leaves nothing behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_dropped_mid_flight_hands_on_and_its_asks_are_answered() {
        let fake = Arc::new(Fake { left: AtomicUsize::new(100), trips: 0.into(), asked: 0.into() });
        let together = Arc::new(Together::<&'static str>::default());
        // The leader: its round trip never ends until it is dropped.
        let lead = {
            let together = together.clone();
            tokio::spawn(async move {
                together.ask(&"acme", |_| std::future::pending::<Result<(usize, Duration), LimitError>>()).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (fake, together) = (fake.clone(), together.clone());
            tasks.spawn(async move { together.ask(&"acme", |n| fake.ask(n)).await });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        lead.abort();
        let answers = tokio::time::timeout(Duration::from_secs(5), tasks.join_all()).await.expect("asks stalled");
        assert!(answers.iter().all(|a| matches!(a, Ok(None))), "{answers:?}");
        assert!(together.lock().is_empty());
    }

    #[tokio::test]
    async fn an_error_reaches_every_ask_of_the_round_trip() {
        let together = Together::<u8>::default();
        let a = together.ask(&1, |_| async { Err::<(usize, Duration), _>(LimitError::Other("down".into())) }).await;
        assert!(matches!(a, Err(LimitError::Other(ref m)) if m == "down"), "{a:?}");
        assert!(together.lock().is_empty());
    }
}
