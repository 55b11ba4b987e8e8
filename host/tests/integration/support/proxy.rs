//! A TCP proxy for network faults: forwards `127.0.0.1:<port>` to an
//! upstream server, and can be switched to
//! - *blackhole*: no byte moves in either direction, on the connections open
//!   now and on new ones, and no socket is closed (a peer that vanished
//!   without a word: the kernel still accepts and acknowledges);
//! - *heal new*: the blackholed connections stay silent and open, new ones
//!   are forwarded (a client must give up on its old sockets by itself);
//! - *reset*: every connection open now is closed, new ones are forwarded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the connections do: forward, or not; `epoch` counts resets (a
/// connection from an earlier epoch is closed), `healed` counts "heal new"
/// switches (a connection accepted before the latest one stays silent until
/// a reset).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Ctl {
    blackhole: bool,
    epoch: u64,
    healed: u64,
}

pub struct Proxy {
    pub port: u16,
    ctl: watch::Sender<Ctl>,
    accepted: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (ctl, _) = watch::channel(Ctl { blackhole: false, epoch: 0, healed: 0 });
        let accepted = Arc::new(AtomicUsize::new(0));
        let accept = {
            let ctl = ctl.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let rx = ctl.subscribe();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else { return };
                        relay(client, server, rx).await;
                    });
                }
            })
        };
        Proxy { port, ctl, accepted, accept }
    }

    /// `redis://` URL of the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops every byte, on open and new connections; closes nothing.
    pub fn blackhole(&self) {
        self.ctl.send_modify(|c| c.blackhole = true);
    }

    /// New connections are forwarded; the ones open now stay silent (and
    /// open) until a reset.
    pub fn heal_new(&self) {
        self.ctl.send_modify(|c| {
            c.healed += 1;
            c.blackhole = false;
        });
    }

    /// Closes every open connection; new ones are forwarded.
    pub fn reset(&self) {
        self.ctl.send_modify(|c| {
            c.epoch += 1;
            c.blackhole = false;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Each relay sees the sender gone and closes its sockets.
    }
}

/// Moves bytes both ways while allowed; closes both sockets on a reset or
/// when the proxy is dropped, and passes a close on like any byte.
async fn relay(client: TcpStream, server: TcpStream, mut ctl: watch::Receiver<Ctl>) {
    let born = *ctl.borrow_and_update();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(one_way(cr, sw, ctl.clone(), born), one_way(sr, cw, ctl, born));
}

/// One direction: waits while silent; a chunk read is always written whole
/// (the read is the only step given up on a switch).
async fn one_way(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut ctl: watch::Receiver<Ctl>, born: Ctl) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let now = *ctl.borrow_and_update();
        if now.epoch != born.epoch {
            return;
        }
        // A connection older than the latest "heal new" stays silent.
        if now.blackhole || now.healed != born.healed {
            if ctl.changed().await.is_err() {
                return;
            }
            continue;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = ctl.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
