//! Emulated WAN latency for tests on one machine (this kernel has no netem):
//! connections this agent dials to addresses matching a configured prefix
//! get the configured round trip added, half on the way out and half on the
//! way back, by delay lines between the socket and libp2p. Off unless
//! `overlay.emulated-latency` is set.

use futures::future::Either;
use libp2p::core::ConnectedPoint;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// Round trip added to connections dialled to addresses starting with `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EmulatedLatency {
    /// Start of the address as written in a multiaddr, e.g. `/ip4/127.0.2.`.
    pub prefix: String,
    /// Round trip to add, ms.
    pub rtt_ms: u64,
}

/// The delay to add to a connection, if any.
pub fn delay_for(rules: &[EmulatedLatency], endpoint: &ConnectedPoint) -> Option<Duration> {
    let ConnectedPoint::Dialer { address, .. } = endpoint else {
        return None;
    };
    let text = address.to_string();
    rules.iter().find(|r| text.starts_with(&r.prefix)).map(|r| Duration::from_millis(r.rtt_ms))
}

/// A stream with or without delay lines.
pub type Shaped<S> = Either<S, Compat<tokio::io::DuplexStream>>;

/// Puts `stream` behind two delay lines of `rtt / 2` each.
pub fn shape<S>(stream: S, rtt: Option<Duration>) -> Shaped<S>
where
    S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    let Some(rtt) = rtt else {
        return Either::Left(stream);
    };
    let one_way = rtt / 2;
    let (app, pump) = tokio::io::duplex(256 << 10);
    let (socket_read, socket_write) = tokio::io::split(stream.compat());
    let (pump_read, pump_write) = tokio::io::split(pump);
    tokio::spawn(delay_line(pump_read, socket_write, one_way));
    tokio::spawn(delay_line(socket_read, pump_write, one_way));
    Either::Right(app.compat())
}

/// Copies `from` to `to`, each chunk `delay` after it was read, in order.
async fn delay_line<R, W>(mut from: R, mut to: W, delay: Duration)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    while let Some((due, bytes)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    reader.abort();
}
