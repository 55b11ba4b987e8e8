//! Reading request bodies: a size limit, a deadline, and a memory budget
//! shared by every request. The bytes only; what they must hold is
//! `api::json_body`'s. A refusal is a `BodyError`, mapped to HTTP in
//! `api::error`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a body could not be read. Mapped to HTTP in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {0:?}")]
    TooSlow(Duration),
    #[error("too many request bodies are being received at once; retry shortly")]
    Busy,
    #[error("the request body could not be read: {0}")]
    Broken(String),
    /// The server's own fault: the API's router did not install the budget.
    #[error("no body budget configured")]
    NoBudget,
}

/// Request body bytes held in memory at once, across all requests: a body
/// takes its share as its bytes arrive (a slow sender holds only what it has
/// sent) and gives it back when the handler drops it.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget { bytes: Arc::new(Semaphore::new(bytes.clamp(1, Semaphore::MAX_PERMITS))) }
    }

    /// Bytes not taken right now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    fn take(&self, n: usize, held: &mut Option<OwnedSemaphorePermit>) -> Result<(), BodyError> {
        let n = u32::try_from(n).map_err(|_| BodyError::Busy)?;
        if n == 0 {
            return Ok(());
        }
        let p = self.bytes.clone().try_acquire_many_owned(n).map_err(|_| BodyError::Busy)?;
        match held {
            Some(h) => h.merge(p),
            None => *held = Some(p),
        }
        Ok(())
    }
}

/// A whole request body, and its share of the `BodyBudget` until dropped.
pub struct ReadBody {
    pub bytes: Vec<u8>,
    share: BodyShare,
}

/// A body's claim on the `BodyBudget`: held while the request is handled
/// (what was made of the body, e.g. its parsed copy, stands in for it), given
/// back on drop.
pub struct BodyShare {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ReadBody {
    /// The bytes and the claim apart, so the raw bytes can go as soon as
    /// they are parsed while the claim lasts until the answer.
    pub fn into_parts(self) -> (Vec<u8>, BodyShare) {
        (self.bytes, self.share)
    }
}

impl std::ops::Deref for ReadBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Before answering 413, reads and throws away up to another `limit` bytes of
/// the body (for at most a second), keeping none of it: a client still
/// writing a somewhat oversized body then reads the 413 instead of a reset
/// connection. hyper closes the connection after the answer if any is left.
/// (A lingering close by hand: hyper has none.)
async fn discard<S, E>(stream: &mut S, limit: usize)
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let draining = async {
        let mut seen = 0usize;
        while seen <= limit {
            match stream.next().await {
                Some(Ok(chunk)) => seen += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), draining).await;
}

/// Reads a body of at most `limit` bytes within `deadline`, counting it
/// against `budget` as it arrives. A `Content-Length` over the limit is
/// refused before anything is read.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    budget: &BodyBudget,
    limit: usize,
    deadline: Duration,
) -> Result<ReadBody, BodyError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        discard(&mut stream, limit).await;
        return Err(BodyError::TooLarge { limit });
    }
    // One allocation of the announced size (a large one is mapped lazily, so
    // a slow sender's pages are only touched as its bytes arrive).
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut share = None;
    let reading = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            if bytes.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            budget.take(chunk.len(), &mut share)?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(deadline, reading).await;
    if let Ok(Err(BodyError::TooLarge { .. } | BodyError::Busy)) = &outcome {
        // Nothing is kept, and the client reads its 413 or 503 + Retry-After.
        drop(share.take());
        discard(&mut stream, limit).await;
    }
    match outcome {
        Ok(Ok(())) => Ok(ReadBody { bytes, share: BodyShare { _permit: share } }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BodyError::TooSlow(deadline)),
    }
}

/// `read` with the API's limits, for a handler that has done its checks
/// (API key, content type, vendor) and now wants the body.
pub async fn read_request(req: axum::extract::Request, st: &super::AppState) -> Result<ReadBody, BodyError> {
    read_request_up_to(req, st, st.api.max_body_bytes).await
}

/// `read_request` with another size limit (a batch's).
pub async fn read_request_up_to(
    req: axum::extract::Request,
    st: &super::AppState,
    limit: usize,
) -> Result<ReadBody, BodyError> {
    let budget = req.extensions().get::<BodyBudget>().cloned().ok_or(BodyError::NoBudget)?;
    let (parts, body) = req.into_parts();
    read(&parts.headers, body, &budget, limit, st.api.body_read_timeout).await
}
