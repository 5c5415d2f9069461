//! Answering peers' questions about images: names, chunk maps, manifests
//! and chunks, from the store or from a fetch still running, with uploads
//! paced to the configured limit.

use super::wire::{Ask, Reply, pack};
use super::{PER_PEER, Running, Shared};
use crate::images::ImageConfig;
use crate::images::manifest::CHUNK_BYTES;
use crate::overlay::{Asked, Service, ToOverlay};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use locus_core::cluster::PeerId as CorePeer;
use locus_core::request::valid_image_hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The limiter counts KiB: a chunk of 1 MiB is 1,024 cells.
const CELL: u64 = 1024;

/// This agent's uploads: their pace, their queue and their count.
#[derive(Debug)]
pub struct Uploads {
    limiter: Option<DefaultDirectRateLimiter>,
    limit_mbit: u64,
    queued: AtomicUsize,
    max_queued: usize,
    /// Chunks queued per asking peer: one peer may hold [`PER_PEER`] places
    /// of the queue, so a fetcher that asks again at once cannot starve
    /// one that was told to wait.
    by_peer: std::sync::Mutex<std::collections::HashMap<CorePeer, usize>>,
    /// Queued chunks go out in the order they were asked (tokio's
    /// semaphore is fair), one at a time through the pacer.
    turn: tokio::sync::Semaphore,
    bytes: AtomicU64,
    chunks: AtomicU64,
    busy: AtomicU64,
}

impl Uploads {
    /// Uploads as `config` limits them.
    pub fn new(config: &ImageConfig) -> Uploads {
        let kib_per_s = config.upload_limit_mbit.saturating_mul(1_000_000 / 8) / CELL;
        // A burst of one chunk: the pace holds from the first second, and
        // a chunk never waits for more cells than the bucket holds.
        let burst = NonZeroU32::new((CHUNK_BYTES / CELL) as u32);
        let limiter = u32::try_from(kib_per_s.max(1))
            .ok()
            .and_then(NonZeroU32::new)
            .zip(burst)
            .map(|(rate, burst)| RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)));
        Uploads {
            limiter: limiter.filter(|_| config.upload_limit_mbit > 0),
            limit_mbit: config.upload_limit_mbit,
            queued: AtomicUsize::new(0),
            max_queued: config.max_uploads.max(1),
            by_peer: Default::default(),
            turn: tokio::sync::Semaphore::new(1),
            bytes: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// Chunk bytes sent.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Chunks sent.
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }

    /// Chunk questions answered "busy".
    pub fn busy(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    /// The limit, Mbit/s (0: none).
    pub fn limit_mbit(&self) -> u64 {
        self.limit_mbit
    }
}

/// Answers one question.
pub(super) async fn answer(shared: Arc<Shared>, q: Asked) {
    let reply = match crate::overlay::codec::decode::<Ask>(&q.bytes) {
        Ok(ask) => {
            // A peer asking for an image this agent is fetching is
            // fetching it too: it is asked in turn.
            if let Ask::Have(hex) | Ask::Chunk(hex, _) = &ask
                && let Some(r) = shared.running().get(hex)
            {
                let _ = r.found.send(q.from.clone());
            }
            reply(&shared, &q.from, ask).await
        }
        Err(e) => {
            tracing::warn!(peer = %q.from, error = %e, "image question refused");
            Reply::Refused(format!("not a question of {}: {e}", crate::overlay::CHUNK_PROTOCOL))
        }
    };
    match crate::overlay::codec::encode(&reply) {
        Ok(bytes) => {
            let _ = shared.overlay.send(ToOverlay::Answer(Service::Chunks, q.id, bytes));
        }
        Err(e) => tracing::warn!(error = %e, "an image answer could not be encoded"),
    }
}

/// Where the chunks of image `hex` are read from: the store, or a fetch
/// that holds some.
enum Holding {
    Stored(crate::images::manifest::Manifest),
    Fetching(Arc<Running>),
}

fn holding(shared: &Shared, hex: &str) -> Option<Holding> {
    if !valid_image_hash(hex) {
        return None;
    }
    if shared.images.holds(hex)
        && let Some(m) = shared.images.manifest(hex)
    {
        return Some(Holding::Stored(m));
    }
    let running = shared.running().get(hex).cloned()?;
    running.partial.get().is_some().then_some(Holding::Fetching(running))
}

async fn reply(shared: &Arc<Shared>, from: &CorePeer, ask: Ask) -> Reply {
    match ask {
        Ask::Find(name) => match shared.images.resolve(&name) {
            Ok(base) => Reply::Found(base.hex),
            Err(_) => Reply::Missing,
        },
        Ask::Have(hex) => match holding(shared, &hex) {
            Some(Holding::Stored(m)) => Reply::Have { manifest: m.id(), bitmap: None },
            Some(Holding::Fetching(r)) => match r.partial.get() {
                Some(p) => Reply::Have { manifest: p.id.clone(), bitmap: Some(pack(&p.have())) },
                None => Reply::Missing,
            },
            None => Reply::Missing,
        },
        Ask::Manifest(hex) => match holding(shared, &hex) {
            Some(Holding::Stored(m)) => Reply::Manifest(m.encode()),
            Some(Holding::Fetching(r)) => {
                r.partial.get().map_or(Reply::Missing, |p| Reply::Manifest(p.manifest.encode()))
            }
            None => Reply::Missing,
        },
        Ask::Chunk(hex, i) => chunk(shared, from, &hex, i).await,
        Ask::Inventory => Reply::Inventory(super::inventory(shared)),
        Ask::Fetch(image) => {
            let exchange = super::Exchange { shared: shared.clone() };
            Reply::Fetching(match exchange.fetch(&image, None).await {
                Ok(super::Fetching::Held(_)) => "held already".into(),
                Ok(super::Fetching::Started(_)) => "fetching".into(),
                Err(e) => e.to_string(),
            })
        }
    }
}

/// A chunk, paced: refused as busy past the queue (or past the asking
/// peer's share of it), then read and sent in turn when the limiter allows
/// its bytes.
async fn chunk(shared: &Arc<Shared>, from: &CorePeer, hex: &str, i: u64) -> Reply {
    let Some(held) = holding(shared, hex) else { return Reply::Missing };
    let u = &shared.uploads;
    {
        let mut by_peer = u.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        let mine = by_peer.get(from).copied().unwrap_or(0);
        if mine >= PER_PEER || u.queued.load(Ordering::SeqCst) >= u.max_queued {
            u.busy.fetch_add(1, Ordering::Relaxed);
            return Reply::Busy;
        }
        by_peer.insert(from.clone(), mine + 1);
        u.queued.fetch_add(1, Ordering::SeqCst);
    }
    let reply = match u.turn.acquire().await {
        Ok(_turn) => paced(shared, held, i).await,
        Err(_) => Reply::Busy,
    };
    u.queued.fetch_sub(1, Ordering::SeqCst);
    let mut by_peer = u.by_peer.lock().unwrap_or_else(|e| e.into_inner());
    match by_peer.get_mut(from) {
        Some(n) if *n > 1 => *n -= 1,
        _ => {
            by_peer.remove(from);
        }
    }
    reply
}

async fn paced(shared: &Arc<Shared>, held: Holding, i: u64) -> Reply {
    let read = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || match held {
            Holding::Stored(m) => shared.images.read_chunk(&m, i).map(Some),
            Holding::Fetching(r) => match r.partial.get() {
                Some(p) if p.holds(i) => p.get(i).map(Some),
                _ => Ok(None),
            },
        })
        .await
    };
    let bytes = match read {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return Reply::Missing,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, chunk = i, "an image chunk could not be read");
            return Reply::Missing;
        }
        Err(_) => return Reply::Missing,
    };
    let u = &shared.uploads;
    if let Some(limiter) = &u.limiter {
        let cells = bytes.len().div_ceil(CELL as usize).max(1) as u32;
        if let Some(cells) = NonZeroU32::new(cells)
            && limiter.until_n_ready(cells).await.is_err()
        {
            tracing::warn!(chunk = i, "a chunk larger than the upload burst is sent unpaced");
        }
    }
    u.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    u.chunks.fetch_add(1, Ordering::Relaxed);
    Reply::Chunk(bytes)
}
