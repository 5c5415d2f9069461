//! One fetch: find the holders, take the manifest, ask for chunks (rarest
//! first, nearest holder with room), keep the ones that match, and hand
//! the complete image to the store.

use super::partial::{self, Partial, PutError};
use super::wire::{Ask, Reply};
use super::{CORRUPT_LIMIT, IN_FLIGHT, PER_PEER, Running, Shared, Source, Stage};
use crate::images::manifest::Manifest;
use crate::images::{ImageError, ImageInfo};
use crate::overlay::{Service, ToOverlay};
use locus_core::cluster::PeerId as CorePeer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// A fetch that gets no chunk, and no holder's "busy", for this long gives
/// up.
const STALL: Duration = Duration::from_secs(60);
/// A fetch that finds no holder for this long gives up.
const NO_HOLDER: Duration = Duration::from_secs(20);
/// How often chunk maps are asked again and the rarest chunks recomputed.
const TICK: Duration = Duration::from_millis(500);
/// How often the DHT is asked again for holders (new fetchers hold chunks).
const REDISCOVER: Duration = Duration::from_secs(5);
/// Failed questions in a row after which a holder is left for a while.
const FAILURES: u32 = 3;
/// How long a failed holder is left alone.
const DEAD_FOR: Duration = Duration::from_secs(15);
/// How long a busy holder is left alone.
const BUSY_FOR: Duration = Duration::from_millis(250);

/// Asks `peer` on the chunk protocol.
pub(super) async fn ask(shared: &Shared, peer: &CorePeer, ask: &Ask) -> Result<Reply, String> {
    let bytes = crate::overlay::codec::encode(ask).map_err(|e| e.to_string())?;
    let (tx, rx) = oneshot::channel();
    shared
        .overlay
        .send(ToOverlay::Ask(Service::Chunks, peer.clone(), bytes, tx))
        .map_err(|_| "the overlay stopped".to_owned())?;
    let answer = rx.await.map_err(|_| "the overlay stopped".to_owned())??;
    crate::overlay::codec::decode(&answer).map_err(|e| format!("an answer that does not decode: {e}"))
}

/// The agents the DHT says hold `key`, as found within `wait`.
pub(super) async fn providers(shared: &Shared, key: Vec<u8>, wait: Duration) -> Vec<CorePeer> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = shared.overlay.send(ToOverlay::Providers(key, tx));
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while let Some(p) = rx.recv().await {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    })
    .await;
    out
}

/// A holder, as this fetch knows it.
#[derive(Debug, Default)]
struct Holder {
    /// Its best round trip on chunk-map questions.
    rtt: Option<Duration>,
    /// The manifest id its chunks belong to.
    manifest: Option<String>,
    /// Its chunk map; None: every chunk.
    bitmap: Option<Vec<u8>>,
    /// Whether its chunk map is known.
    mapped: bool,
    asking_map: bool,
    in_flight: usize,
    failures: u32,
    away_until: Option<Instant>,
    banned: bool,
    source: Source,
}

impl Holder {
    fn has(&self, i: u64) -> bool {
        self.mapped
            && match &self.bitmap {
                None => true,
                Some(b) => b.get(i as usize / 8).is_some_and(|byte| byte & (1 << (i % 8)) != 0),
            }
    }

    fn forget(&mut self, i: u64) {
        let bitmap = self.bitmap.get_or_insert_with(Vec::new);
        if let Some(byte) = bitmap.get_mut(i as usize / 8) {
            *byte &= !(1 << (i % 8));
        }
    }

    fn usable(&self, id: &str, now: Instant) -> bool {
        !self.banned && self.manifest.as_deref() == Some(id) && self.away_until.is_none_or(|t| t <= now)
    }
}

enum Event {
    Map(CorePeer, Duration, Result<Reply, String>),
    Manifest(CorePeer, String, Result<Reply, String>),
    Chunk(CorePeer, u64, Result<Reply, String>),
    Stored(CorePeer, u64, Result<(), PutError>),
    Opened(Result<Partial, std::io::Error>),
}

struct Fetch<'a> {
    shared: &'a Arc<Shared>,
    running: &'a Arc<Running>,
    hex: &'a str,
    name: Option<&'a str>,
    holders: HashMap<CorePeer, Holder>,
    tasks: JoinSet<Event>,
    /// Chunks asked for, and of whom.
    asked: HashMap<u64, Vec<CorePeer>>,
    /// Chunks by rarity, rarest first (ties in random order).
    order: Vec<u64>,
    opening: bool,
    last_progress: Instant,
    /// Every chunk is held and counted (a chunk's write sets its bit
    /// before its event is handled: the fetch ends on the event).
    complete: bool,
}

/// Runs the fetch of image `hex` to its end.
pub(super) async fn run(
    shared: &Arc<Shared>,
    running: &Arc<Running>,
    mut found: mpsc::UnboundedReceiver<CorePeer>,
    hex: &str,
    name: Option<&str>,
    from: Option<CorePeer>,
) -> Result<ImageInfo, ImageError> {
    let started = Instant::now();
    let mut f = Fetch {
        shared,
        running,
        hex,
        name,
        holders: HashMap::new(),
        tasks: JoinSet::new(),
        asked: HashMap::new(),
        order: Vec::new(),
        opening: false,
        last_progress: started,
        complete: false,
    };
    let dir = shared.images.fetching_dir();
    if let Some((m, _)) = partial::left_over(&dir).into_iter().find(|(m, _)| m.file == hex) {
        f.open(m);
    }
    let found_tx = running.found.clone();
    let only = from.clone();
    match from {
        Some(peer) => {
            let _ = found_tx.send(peer);
        }
        None => {
            let _ = shared.overlay.send(ToOverlay::Providers(super::image_key(hex), found_tx.clone()));
        }
    }
    let mut tick = tokio::time::interval(TICK);
    let mut last_discovery = Instant::now();
    while !f.complete {
        f.schedule();
        tokio::select! {
            Some(peer) = found.recv() => {
                if only.as_ref().is_none_or(|o| *o == peer) {
                    f.found(peer);
                }
            }
            Some(done) = f.tasks.join_next() => match done {
                Ok(event) => f.event(event)?,
                Err(e) => return Err(ImageError::internal(e, "a fetch step failed")),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if running.partial.get().is_none() && f.holders.is_empty() && started.elapsed() > NO_HOLDER {
                    return Err(ImageError::Nowhere(format!("sha256:{hex}")));
                }
                if f.last_progress.elapsed() > STALL {
                    return Err(f.stalled());
                }
                // Often while a fetch starts (the others fetching the same
                // image are found, and serve each other, from the first
                // seconds), then now and then.
                let every = if started.elapsed() < REDISCOVER { TICK } else { REDISCOVER };
                if only.is_none() && now - last_discovery >= every {
                    last_discovery = now;
                    let _ = shared.overlay.send(ToOverlay::Providers(super::image_key(hex), found_tx.clone()));
                }
                f.refresh();
            }
        }
    }
    f.finish().await
}

impl Fetch<'_> {
    fn partial(&self) -> Option<&Arc<Partial>> {
        self.running.partial.get()
    }

    fn found(&mut self, peer: CorePeer) {
        let holder = self.holders.entry(peer.clone()).or_default();
        if holder.mapped
            || holder.banned
            || holder.asking_map
            || holder.away_until.is_some_and(|t| t > Instant::now())
        {
            return;
        }
        self.ask_map(peer);
    }

    fn ask_map(&mut self, peer: CorePeer) {
        let Some(h) = self.holders.get_mut(&peer) else { return };
        h.asking_map = true;
        let shared = self.shared.clone();
        let q = Ask::Have(self.hex.to_owned());
        self.tasks.spawn(async move {
            let t = Instant::now();
            let r = ask(&shared, &peer, &q).await;
            Event::Map(peer, t.elapsed(), r)
        });
    }

    /// Asks the holders whose maps may have grown, and orders the chunks
    /// by rarity again.
    fn refresh(&mut self) {
        let stale: Vec<CorePeer> = self
            .holders
            .iter()
            .filter(|(_, h)| !h.banned && !h.asking_map && (h.bitmap.is_some() || !h.mapped))
            .filter(|(_, h)| h.away_until.is_none_or(|t| t <= Instant::now()))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in stale {
            self.ask_map(peer);
        }
        let Some(p) = self.partial() else { return };
        let have = p.have();
        let id = p.id.clone();
        let now = Instant::now();
        let mut rarity: Vec<(usize, u32, u64)> = (0..have.len() as u64)
            .filter(|i| !have[*i as usize])
            .map(|i| {
                let holders = self.holders.values().filter(|h| h.usable(&id, now) && h.has(i)).count();
                (holders, fastrand::u32(..), i)
            })
            .collect();
        rarity.sort_unstable();
        self.order = rarity.into_iter().map(|(_, _, i)| i).collect();
    }

    fn open(&mut self, m: Manifest) {
        self.opening = true;
        let dir = self.shared.images.fetching_dir();
        let name = self.name.map(str::to_owned);
        self.tasks.spawn_blocking(move || Event::Opened(Partial::open(&dir, m, name.as_deref())));
    }

    fn event(&mut self, event: Event) -> Result<(), ImageError> {
        let now = Instant::now();
        match event {
            Event::Map(peer, rtt, answer) => {
                let Some(h) = self.holders.get_mut(&peer) else { return Ok(()) };
                h.asking_map = false;
                match answer {
                    Ok(Reply::Have { manifest, bitmap }) => {
                        h.rtt = Some(h.rtt.map_or(rtt, |r| r.min(rtt)));
                        h.source.rtt_ms = h.rtt.map_or(0, |r| r.as_millis() as u32);
                        h.manifest = Some(manifest.clone());
                        h.bitmap = bitmap;
                        h.mapped = true;
                        h.failures = 0;
                        if self.partial().is_none() && !self.opening {
                            self.ask_manifest(peer, manifest);
                        }
                    }
                    Ok(_) => {
                        h.mapped = true;
                        h.bitmap = Some(Vec::new());
                    }
                    Err(e) => self.failed(&peer, &e),
                }
                self.report();
            }
            Event::Manifest(peer, id, answer) => {
                self.opening = false;
                let max = self.shared.images.config().max_bytes;
                let answer = match answer {
                    Ok(a) => a,
                    // Unreachable, not lying: asked again at its next map.
                    Err(e) => {
                        self.failed(&peer, &e);
                        return Ok(());
                    }
                };
                let checked = match answer {
                    Reply::Manifest(bytes) => Manifest::decode(&bytes, &id)
                        .map_err(|e| e.to_string())
                        .and_then(|m| if m.file == self.hex { Ok(m) } else { Err("of another image".into()) })
                        .and_then(|m| {
                            if m.size <= max {
                                Ok(m)
                            } else {
                                Err(format!("{} bytes, over images.max-bytes", m.size))
                            }
                        }),
                    other => Err(format!("answered {}", other.kind())),
                };
                match checked {
                    Ok(m) => self.open(m),
                    Err(e) => {
                        tracing::warn!(%peer, image = %self.hex, error = %e, "a manifest from a holder is refused");
                        if let Some(h) = self.holders.get_mut(&peer) {
                            h.banned = true;
                        }
                    }
                }
            }
            Event::Opened(opened) => {
                self.opening = false;
                let p = opened.map_err(|e| ImageError::io(e, "starting an image fetch"))?;
                tracing::info!(image = %self.hex, chunks = p.manifest.chunk_count(), held = p.count(), "fetching an image");
                self.complete = p.complete();
                let _ = self.running.partial.set(Arc::new(p));
                self.last_progress = now;
                self.refresh();
                self.report();
            }
            Event::Chunk(peer, i, answer) => {
                let h = self.holders.entry(peer.clone()).or_default();
                h.in_flight = h.in_flight.saturating_sub(1);
                match answer {
                    Ok(Reply::Chunk(bytes)) => {
                        h.in_flight += 1;
                        let Some(p) = self.partial().cloned() else { return Ok(()) };
                        self.tasks.spawn_blocking(move || {
                            let r = if p.holds(i) { Ok(()) } else { p.put(i, &bytes) };
                            Event::Stored(peer, i, r)
                        });
                        return Ok(());
                    }
                    Ok(Reply::Busy) => {
                        // Alive, only busy: not a stall.
                        h.away_until = Some(now + BUSY_FOR);
                        self.last_progress = now;
                    }
                    Ok(_) => h.forget(i),
                    Err(e) => self.failed(&peer, &e),
                }
                self.unask(i, &peer);
            }
            Event::Stored(peer, i, result) => {
                self.unask(i, &peer);
                let h = self.holders.entry(peer.clone()).or_default();
                h.in_flight = h.in_flight.saturating_sub(1);
                match result {
                    Ok(()) => {
                        h.source.chunks += 1;
                        h.failures = 0;
                        self.last_progress = now;
                        self.asked.remove(&i);
                        self.complete = self.partial().is_some_and(|p| p.complete());
                    }
                    Err(PutError::Corrupt) => {
                        h.source.corrupt += 1;
                        h.forget(i);
                        tracing::warn!(%peer, image = %self.hex, chunk = i, corrupt = h.source.corrupt, "a chunk that does not match the manifest is dropped");
                        if h.source.corrupt >= CORRUPT_LIMIT {
                            h.banned = true;
                            tracing::warn!(%peer, image = %self.hex, "a holder sending corrupt chunks is no longer asked");
                        }
                    }
                    Err(PutError::Io(e)) => {
                        if crate::images::is_no_space(&e) {
                            partial::remove(&self.shared.images.fetching_dir(), self.hex);
                        }
                        return Err(ImageError::io(e, "writing a fetched chunk"));
                    }
                }
                self.report();
            }
        }
        Ok(())
    }

    fn ask_manifest(&mut self, peer: CorePeer, id: String) {
        self.opening = true;
        let shared = self.shared.clone();
        let q = Ask::Manifest(self.hex.to_owned());
        self.tasks.spawn(async move {
            let r = ask(&shared, &peer, &q).await;
            Event::Manifest(peer, id, r)
        });
    }

    fn unask(&mut self, i: u64, peer: &CorePeer) {
        if let Some(who) = self.asked.get_mut(&i) {
            who.retain(|p| p != peer);
            if who.is_empty() {
                self.asked.remove(&i);
            }
        }
    }

    fn failed(&mut self, peer: &CorePeer, error: &str) {
        let Some(h) = self.holders.get_mut(peer) else { return };
        h.failures += 1;
        if h.failures >= FAILURES {
            tracing::info!(%peer, image = %self.hex, error, "a holder that does not answer is left for a while");
            h.away_until = Some(Instant::now() + DEAD_FOR);
            h.failures = 0;
        }
    }

    /// Asks for chunks while there is room: the rarest first, each of the
    /// nearest usable holder that has it; once every missing chunk is
    /// asked for, the last ones of a second holder too (endgame).
    fn schedule(&mut self) {
        let Some(p) = self.partial().cloned() else { return };
        let now = Instant::now();
        let mut room = IN_FLIGHT.saturating_sub(self.asked.values().map(Vec::len).sum());
        if room == 0 {
            return;
        }
        let endgame = self.order.iter().all(|i| p.holds(*i) || self.asked.contains_key(i));
        let order = std::mem::take(&mut self.order);
        for &i in &order {
            if room == 0 {
                break;
            }
            if p.holds(i) {
                continue;
            }
            let asked = self.asked.get(&i).map_or(0, Vec::len);
            if asked > usize::from(endgame) {
                continue;
            }
            let already = self.asked.get(&i).cloned().unwrap_or_default();
            let pick = self
                .holders
                .iter()
                .filter(|(peer, h)| {
                    h.usable(&p.id, now) && h.in_flight < PER_PEER && h.has(i) && !already.contains(peer)
                })
                // Nearest first; among holders as near, one that is still
                // fetching before one with the whole image, whose uploads
                // are best spent on the chunks only it has; then the least
                // asked.
                .min_by_key(|(_, h)| {
                    (h.rtt.map_or(u128::MAX, |r| r.as_millis() / 10), h.bitmap.is_none(), h.in_flight)
                })
                .map(|(peer, _)| peer.clone());
            let Some(peer) = pick else { continue };
            if let Some(h) = self.holders.get_mut(&peer) {
                h.in_flight += 1;
            }
            self.asked.entry(i).or_default().push(peer.clone());
            room -= 1;
            let shared = self.shared.clone();
            let q = Ask::Chunk(self.hex.to_owned(), i);
            self.tasks.spawn(async move {
                let r = ask(&shared, &peer, &q).await;
                Event::Chunk(peer, i, r)
            });
        }
        self.order = order;
    }

    fn report(&self) {
        let p = self.partial();
        let mut sources: Vec<Source> = self
            .holders
            .iter()
            .filter(|(_, h)| h.source.chunks > 0 || h.source.corrupt > 0)
            .map(|(peer, h)| Source { peer: peer.to_string(), ..h.source.clone() })
            .collect();
        sources.sort_by(|a, b| b.chunks.cmp(&a.chunks).then(a.peer.cmp(&b.peer)));
        let holders = self.holders.values().filter(|h| h.mapped && !h.banned).count() as u32;
        self.running.progress.send_modify(|t| {
            if let Some(p) = p {
                t.stage = Stage::Fetching;
                t.size_bytes = p.manifest.size;
                t.chunks = p.manifest.chunk_count();
                t.have_chunks = p.count() as u64;
            }
            t.holders = holders;
            t.sources = sources;
        });
    }

    fn stalled(&self) -> ImageError {
        let missing = self.partial().map_or(0, |p| p.manifest.chunk_count() as usize - p.count());
        ImageError::Upload(format!(
            "no chunk of sha256:{} came for {} s ({} holders known, {missing} chunks missing); the fetch goes on at the next request",
            self.hex,
            STALL.as_secs(),
            self.holders.len()
        ))
    }

    /// Checks the whole image and hands it to the store.
    async fn finish(self) -> Result<ImageInfo, ImageError> {
        let Some(p) = self.partial().cloned() else {
            return Err(ImageError::internal("no manifest", "finishing a fetch"));
        };
        self.running.progress.send_modify(|t| {
            t.stage = Stage::Checking;
            t.have_chunks = t.chunks;
        });
        let synced = p.clone();
        tokio::task::spawn_blocking(move || synced.sync())
            .await
            .map_err(|e| ImageError::internal(e, "finishing a fetch"))?
            .map_err(|e| ImageError::io(e, "finishing a fetch"))?;
        let dir = self.shared.images.fetching_dir();
        let result = self.shared.images.adopt(self.name, p.path(), &p.manifest).await;
        // Taken or refused, the fetch's files go: a refused image came from
        // a lying manifest and is fetched again from scratch if asked.
        partial::remove(&dir, self.hex);
        result
    }
}
