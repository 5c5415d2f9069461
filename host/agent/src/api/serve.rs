//! Serving the API on one listener within bounds a client cannot lift: at
//! most `max-connections` at once (more wait in the kernel's accept queue
//! and cost the agent no file descriptor), a deadline for each request's
//! headers that also closes idle keep-alive connections, and one for each
//! piece of a request body. Each listener has its own bound, so a flood on
//! the TCP port leaves the unix socket, and the overlay's own listener,
//! serving.
//!
//! A flood of connections that never send a request would still take every
//! slot until their header deadline, shutting real clients out. So when the
//! listener is full, the oldest connection that has not sent a request yet
//! is closed to make room: a real client sends its request within
//! milliseconds of connecting and is then safe from eviction, while a
//! flooder's silent connections make room for each other.

use axum::Router;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::RequestBodyTimeout;

/// Bounds on each API listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ApiLimits {
    /// Connections served at once, per listener (the unix socket and the
    /// TCP port each have this many).
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and longest a
    /// keep-alive connection may sit idle, ms.
    pub header_timeout_ms: u64,
    /// Longest wait for the next piece of a request body, ms.
    pub body_timeout_ms: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits { max_connections: 512, header_timeout_ms: 10_000, body_timeout_ms: 10_000 }
    }
}

/// Serves `router` on `listener` until `cancel`, over TLS when `tls` is
/// given; then lets requests in flight finish.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ApiLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cancel: CancellationToken,
) where
    L: axum::serve::Listener,
{
    let service = RequestBodyTimeout::new(router, Duration::from_millis(limits.body_timeout_ms));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut silent = Silent::default();
    let connections = TaskTracker::new();
    loop {
        if slots.available_permits() == 0 {
            silent.evict_oldest();
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            _ = cancel.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        // `accept` retries by itself on transient errors (such as running
        // out of file descriptors), logging them.
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = cancel.cancelled() => break,
        };
        let (spoke, evict) = silent.track();
        let inner = TowerToHyperService::new(service.clone());
        let marked = hyper::service::service_fn(move |req| {
            spoke.store(true, Ordering::Relaxed);
            inner.call(req)
        });
        let cancel = cancel.clone();
        let header_timeout = Duration::from_millis(limits.header_timeout_ms);
        let tls = tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            // However it ends, it is no longer a candidate for eviction.
            let _ended = evict.clone().drop_guard();
            // The handshake is the first thing a client owes: it gets the
            // header deadline, and a silent one can be evicted meanwhile.
            let io = match tls {
                None => Either::Left(io),
                Some(tls) => {
                    let handshake = tokio::time::timeout(header_timeout, tls.accept(io));
                    match tokio::select! { h = handshake => h, _ = evict.cancelled() => return } {
                        Ok(Ok(stream)) => Either::Right(stream),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), marked);
            tokio::pin!(connection);
            let result = tokio::select! {
                r = connection.as_mut() => r,
                // Closed to make room: it never sent a request.
                _ = evict.cancelled() => return,
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "API connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Connections that have not sent a request yet, oldest first.
#[derive(Default)]
struct Silent {
    queue: VecDeque<(Arc<AtomicBool>, CancellationToken)>,
}

impl Silent {
    /// Tracks a new connection: the flag its service raises at the first
    /// request, and the token that closes it.
    fn track(&mut self) -> (Arc<AtomicBool>, CancellationToken) {
        // Forget connections that spoke or ended, so the queue stays as
        // long as the silent ones.
        self.queue.retain(|(spoke, evict)| !spoke.load(Ordering::Relaxed) && !evict.is_cancelled());
        let entry = (Arc::new(AtomicBool::new(false)), CancellationToken::new());
        self.queue.push_back(entry.clone());
        entry
    }

    /// Closes the oldest connection that is still silent, if any.
    fn evict_oldest(&mut self) {
        while let Some((spoke, evict)) = self.queue.pop_front() {
            if !spoke.load(Ordering::Relaxed) && !evict.is_cancelled() {
                evict.cancel();
                return;
            }
        }
    }
}
