//! A pool of keep-alive HTTP/1.1 connections for the load generator.
//!
//! Plain `http://` targets use a minimal client written on `TcpStream`: the
//! generator shares the CPU with the service it measures, and a request here
//! costs a fraction of what a general-purpose client spends. `https://`
//! targets go through reqwest.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Reqwest(#[from] reqwest::Error),
}

/// A reply: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// At most `max_conns` requests in flight, each on its own connection.
pub struct Pool {
    base: Url,
    /// `host:port` for connecting and for the `Host` header.
    authority: String,
    /// The base URL's path without its trailing `/`.
    prefix: String,
    auth: Option<String>,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    tls: Option<reqwest::Client>,
}

impl Pool {
    pub fn new(base: &str, max_conns: usize, timeout: Duration, api_key: Option<&str>) -> anyhow::Result<Pool> {
        let url = Url::parse(base).map_err(|e| anyhow::anyhow!("--url {base:?}: {e}"))?;
        let host = url.host_str().ok_or_else(|| anyhow::anyhow!("--url {base:?} has no host"))?.to_string();
        let port = url.port_or_known_default().ok_or_else(|| anyhow::anyhow!("--url {base:?} has no port"))?;
        let tls = match url.scheme() {
            "http" => None,
            "https" => Some(
                reqwest::Client::builder()
                    .pool_max_idle_per_host(max_conns)
                    .tcp_nodelay(true)
                    .timeout(timeout)
                    .build()?,
            ),
            other => anyhow::bail!("--url {base:?}: scheme {other:?} is not http or https"),
        };
        Ok(Pool {
            authority: format!("{host}:{port}"),
            prefix: url.path().trim_end_matches('/').to_string(),
            base: url,
            auth: api_key.map(|k| format!("Bearer {k}")),
            timeout,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max_conns.max(1)),
            tls,
        })
    }

    /// Sends one request, waiting for a free connection first. `path` starts with `/`.
    pub async fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Reply, HttpError> {
        // The semaphore is never closed, so acquiring only fails if it were.
        let _permit = self.permits.acquire().await.map_err(|_| HttpError::Malformed("pool closed"))?;
        match tokio::time::timeout(self.timeout, self.send_now(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }

    async fn send_now(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Reply, HttpError> {
        if let Some(client) = &self.tls {
            return self.send_tls(client, method, path, body).await;
        }
        let request = self.encode(method, path, body);
        let reused = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let was_reused = reused.is_some();
        let mut conn = match reused {
            Some(c) => c,
            None => Conn::open(&self.authority).await?,
        };
        let result = match conn.round_trip(&request).await {
            // A kept-alive connection the server closed meanwhile fails before
            // any reply byte: the request was not handled, so try a fresh one.
            Err(RoundTrip { before_reply: true, .. }) if was_reused => {
                conn = Conn::open(&self.authority).await?;
                conn.round_trip(&request).await
            }
            other => other,
        };
        match result {
            Ok((reply, keep)) => {
                if keep && let Ok(mut idle) = self.idle.lock() {
                    idle.push(conn);
                }
                Ok(reply)
            }
            Err(e) => Err(e.error),
        }
    }

    fn encode(&self, method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
        let body = body.unwrap_or_default();
        let mut r = Vec::with_capacity(160 + body.len());
        r.extend_from_slice(
            format!("{method} {}{path} HTTP/1.1\r\nhost: {}\r\n", self.prefix, self.authority).as_bytes(),
        );
        if let Some(a) = &self.auth {
            r.extend_from_slice(format!("authorization: {a}\r\n").as_bytes());
        }
        if method != "GET" {
            r.extend_from_slice(
                format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()).as_bytes(),
            );
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(body);
        r
    }

    async fn send_tls(
        &self,
        client: &reqwest::Client,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, HttpError> {
        let url = format!("{}{}{path}", self.base.origin().ascii_serialization(), self.prefix);
        let mut req = if method == "GET" { client.get(url) } else { client.post(url) };
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_vec());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok(Reply { status, body: resp.bytes().await?.to_vec() })
    }
}

struct RoundTrip {
    error: HttpError,
    before_reply: bool,
}

/// One keep-alive connection and the bytes read past the last reply.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(authority: &str) -> Result<Conn, HttpError> {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| HttpError::Connect { addr: authority.to_string(), source: e })?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::with_capacity(4096) })
    }

    /// Writes the request and reads one reply; `true` if the connection may be reused.
    async fn round_trip(&mut self, request: &[u8]) -> Result<(Reply, bool), RoundTrip> {
        let fail = |error: HttpError, before_reply: bool| RoundTrip { error, before_reply };
        self.stream.write_all(request).await.map_err(|e| fail(e.into(), true))?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let before = self.buf.is_empty();
            if self.fill().await.map_err(|e| fail(e, before))? == 0 {
                return Err(fail(HttpError::Malformed("connection closed before the reply"), before));
            }
        };
        let head = Head::parse(&self.buf[..head_end]).map_err(|e| fail(e, false))?;
        self.buf.drain(..head_end);
        let body = match head.length {
            Length::Fixed(n) => self.take(n).await,
            Length::Chunked => self.take_chunked().await,
            Length::UntilClose => self.take_rest().await,
        }
        .map_err(|e| fail(e, false))?;
        let keep = head.keep_alive && !matches!(head.length, Length::UntilClose);
        Ok((Reply { status: head.status, body }, keep))
    }

    async fn fill(&mut self) -> Result<usize, HttpError> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn take(&mut self, n: usize) -> Result<Vec<u8>, HttpError> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(HttpError::Malformed("body shorter than content-length"));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf.drain(..i + 2).take(i).collect();
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(HttpError::Malformed("truncated chunked body"));
            }
        }
    }

    async fn take_chunked(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size_text =
                std::str::from_utf8(&line).ok().and_then(|s| s.split(';').next()).map(str::trim).unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| HttpError::Malformed("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(size).await?);
            self.take(2).await?;
        }
    }

    async fn take_rest(&mut self) -> Result<Vec<u8>, HttpError> {
        while self.fill().await? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }
}

enum Length {
    Fixed(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    length: Length,
    keep_alive: bool,
}

impl Head {
    fn parse(raw: &[u8]) -> Result<Head, HttpError> {
        let text = std::str::from_utf8(raw).map_err(|_| HttpError::Malformed("non-UTF-8 header"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.split(' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed("not an HTTP/1 status line"));
        }
        let status = parts.next().and_then(|s| s.parse().ok()).ok_or(HttpError::Malformed("bad status code"))?;
        let mut length = Length::UntilClose;
        let mut keep_alive = version == "HTTP/1.1";
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Length::Fixed(value.parse().map_err(|_| HttpError::Malformed("bad content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
                length = Length::Chunked;
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        // Replies that never carry a body.
        if status == 204 || status == 304 || (100..200).contains(&status) {
            length = Length::Fixed(0);
        }
        Ok(Head { status, length, keep_alive })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_length_and_connection() {
        let h = Head::parse(b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 12\r\n\r\n")
            .unwrap();
        assert_eq!(h.status, 202);
        assert!(matches!(h.length, Length::Fixed(12)));
        assert!(h.keep_alive);
        let h = Head::parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").unwrap();
        assert!(matches!(h.length, Length::Chunked));
        assert!(!h.keep_alive);
        assert!(Head::parse(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn reads_chunked_and_keeps_leftovers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .await
                .unwrap();
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno").await.unwrap();
        });
        let pool = Pool::new(&format!("http://{addr}"), 1, Duration::from_secs(5), None).unwrap();
        let r = pool.send("GET", "/a", None).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"abcde".as_slice()));
        let r = pool.send("POST", "/b", Some(b"{}")).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, b"no".as_slice()));
    }
}
