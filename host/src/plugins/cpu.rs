//! CPU time of a future: the calling thread's CPU clock read around each
//! poll and summed. A plugin call yields on every epoch tick and while its
//! HTTP waits, and may resume on another thread, so wall time around the
//! whole call would count waiting and other tasks; per-poll thread CPU time
//! counts only the work done for this call (wasm and the host code it runs).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// The calling thread's CPU time, microseconds (0 where unavailable).
pub fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // the platform defines.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec.max(0) as u64) * 1_000_000 + (ts.tv_nsec.max(0) as u64) / 1_000
}

/// `inner`, counting the CPU time of its polls into `total` (microseconds).
pub struct CpuTimed<F> {
    inner: Pin<Box<F>>,
    total: Arc<AtomicU64>,
}

impl<F: Future> CpuTimed<F> {
    pub fn new(inner: F, total: Arc<AtomicU64>) -> CpuTimed<F> {
        CpuTimed { inner: Box::pin(inner), total }
    }
}

impl<F: Future> Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let before = thread_cpu_us();
        let out = self.inner.as_mut().poll(cx);
        self.total.fetch_add(thread_cpu_us().saturating_sub(before), Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_polls_count_and_sleeping_does_not() {
        let total = Arc::new(AtomicU64::new(0));
        CpuTimed::new(
            async {
                let mut x = 0u64;
                for i in 0..20_000_000u64 {
                    x = x.wrapping_add(std::hint::black_box(i));
                }
                std::hint::black_box(x);
            },
            total.clone(),
        )
        .await;
        let busy = total.load(Ordering::Relaxed);
        assert!(busy > 0, "a busy loop used no CPU time");
        let idle = Arc::new(AtomicU64::new(0));
        CpuTimed::new(tokio::time::sleep(std::time::Duration::from_millis(200)), idle.clone()).await;
        assert!(idle.load(Ordering::Relaxed) < 200_000, "sleeping counted as CPU time");
    }
}
