//! Images between hosts: every agent serves the images it holds, whole or
//! in part, and fetches the ones it lacks from every agent that holds
//! chunks of them, as BitTorrent does.
//!
//! An agent that holds an image, or is fetching one, says so in the DHT
//! (a Kademlia provider record under the image's SHA-256, and one under
//! each of its names). A fetch looks the holders up, asks each which
//! chunks it holds (`Have`: a bitmap, and the id of the manifest they
//! belong to), takes the manifest from the nearest, and asks for chunks in
//! parallel: the rarest first, each from the nearest holder with room
//! (round trips measured on the `Have` questions, so PoP-mates come first
//! and then the nearest PoPs), at most [`PER_PEER`] from one holder and
//! [`IN_FLIGHT`] in all. Every chunk is checked against the manifest as it
//! arrives; a corrupt one is dropped, counted against its sender (banned
//! from the fetch after [`CORRUPT_LIMIT`]) and asked of another. A holder
//! that stops answering is dropped and its chunks come from others. The
//! chunks a fetch holds are served to others at once: the file grows in
//! `fetching/` ([`partial`]), and an agent restarted mid-fetch checks what
//! it holds and goes on. A complete image is checked whole against its
//! SHA-256 and its format, like an upload, before the store takes it.
//!
//! Uploads are paced to `images.upload-limit-mbit` (a token bucket,
//! `governor`) and queued to `images.max-uploads`; past that a holder
//! answers `Busy`, so fetchers go to another holder instead of waiting.

mod fetch;
pub mod partial;
mod serve;
#[cfg(test)]
mod tests;
pub mod wire;

use crate::images::{ImageError, ImageInfo, Images};
use crate::overlay::{Asked, ToOverlay};
use locus_core::cluster::PeerId as CorePeer;
use locus_core::request::{IMAGE_HASH_PREFIX, valid_image_hash, valid_name};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Chunk requests in flight to one holder.
pub const PER_PEER: usize = 2;
/// Chunk requests in flight for one fetch.
pub const IN_FLIGHT: usize = 32;
/// Corrupt chunks after which a holder is no longer asked in a fetch.
pub const CORRUPT_LIMIT: u32 = 3;

/// The DHT key of the holders of image `hex`.
pub fn image_key(hex: &str) -> Vec<u8> {
    format!("/locus/image/{hex}").into_bytes()
}

/// The DHT key of the agents naming an image `name`.
pub fn name_key(name: &str) -> Vec<u8> {
    format!("/locus/image-name/{name}").into_bytes()
}

/// Where a fetch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Looking for holders and the manifest.
    Finding,
    /// Receiving chunks.
    Fetching,
    /// Checking the whole image.
    Checking,
    /// In the store.
    Done,
    /// Given up (see `error`).
    Failed,
}

/// What one holder gave a fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Source {
    /// The holder's peer id.
    pub peer: String,
    /// Chunks it sent that were kept.
    pub chunks: u64,
    /// Chunks it sent that did not match the manifest (dropped).
    pub corrupt: u32,
    /// Its round trip, ms (on the chunk-map questions).
    pub rtt_ms: u32,
}

/// One image being fetched, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Transfer {
    /// `sha256:<hex>` of the image.
    pub hash: String,
    /// The name it gets here, if it was asked for by name.
    pub name: Option<String>,
    /// Where it is.
    pub stage: Stage,
    /// Bytes of the image (0 until the manifest is in).
    pub size_bytes: u64,
    /// Its chunks.
    pub chunks: u64,
    /// Chunks held.
    pub have_chunks: u64,
    /// Holders found.
    pub holders: u32,
    /// Chunks by holder.
    pub sources: Vec<Source>,
    /// Seconds since it started (in this run of the agent).
    pub elapsed_s: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// This agent's fetches and uploads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Transfers {
    /// Fetches running, and the last ones that ended.
    pub fetches: Vec<Transfer>,
    /// Chunk bytes sent to peers since the agent started.
    pub uploaded_bytes: u64,
    /// Chunks sent to peers since the agent started.
    pub uploaded_chunks: u64,
    /// Chunk questions answered "busy" (uploads queued to their limit).
    pub busy: u64,
    /// The upload limit, Mbit/s (0: none).
    pub upload_limit_mbit: u64,
}

/// What this agent holds, whole or in part.
fn inventory(shared: &Shared) -> wire::Inventory {
    let mut images: Vec<wire::Held> = shared
        .images
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|i| wire::Held {
            hash: i.hash,
            names: i.names,
            size_bytes: i.size_bytes,
            have_chunks: i.chunks,
            chunks: i.chunks,
        })
        .collect();
    for r in shared.running().values() {
        let t = r.progress.borrow();
        if t.chunks > 0 {
            images.push(wire::Held {
                hash: t.hash.clone(),
                names: t.name.iter().cloned().collect(),
                size_bytes: t.size_bytes,
                have_chunks: r.partial.get().map_or(0, |p| p.count() as u64),
                chunks: t.chunks,
            });
        }
    }
    wire::Inventory { host: shared.host.clone(), pop: shared.pop.clone(), images }
}

/// Fetches kept after they end, for `image transfers`.
const ENDED_KEPT: usize = 16;

/// A running fetch, shared with the code that serves its chunks.
#[derive(Debug)]
struct Running {
    partial: std::sync::OnceLock<Arc<partial::Partial>>,
    /// Peers found holding or fetching the image: from the DHT, and every
    /// peer that asks this agent for it (a fetcher too, as in BitTorrent).
    found: mpsc::UnboundedSender<CorePeer>,
    progress: watch::Sender<Transfer>,
    started: std::time::Instant,
}

/// The transfer service of one agent.
#[derive(Debug, Clone)]
pub struct Exchange {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    images: Arc<Images>,
    host: String,
    pop: String,
    overlay: mpsc::UnboundedSender<ToOverlay>,
    running: Mutex<HashMap<String, Arc<Running>>>,
    ended: Mutex<std::collections::VecDeque<Transfer>>,
    uploads: serve::Uploads,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fetch's outcome as [`Exchange::fetch`] reports it.
#[derive(Debug)]
pub enum Fetching {
    /// The store holds it already.
    Held(Box<ImageInfo>),
    /// On its way: its progress.
    Started(watch::Receiver<Transfer>),
}

impl Exchange {
    /// Starts serving `asked` questions, says in the DHT which images the
    /// store holds, and resumes the fetches an earlier run left.
    pub fn start(
        (host, pop): (String, String),
        images: Arc<Images>,
        overlay: mpsc::UnboundedSender<ToOverlay>,
        mut asked: mpsc::UnboundedReceiver<Asked>,
        cancel: CancellationToken,
    ) -> Exchange {
        let uploads = serve::Uploads::new(images.config());
        let shared = Arc::new(Shared {
            images,
            host,
            pop,
            overlay,
            running: Mutex::new(HashMap::new()),
            ended: Mutex::new(Default::default()),
            uploads,
        });
        let exchange = Exchange { shared };
        let server = exchange.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    q = asked.recv() => match q {
                        Some(q) => {
                            let shared = server.shared.clone();
                            tokio::spawn(serve::answer(shared, q));
                        }
                        None => break,
                    },
                }
            }
        });
        if let Ok(list) = exchange.shared.images.list() {
            for info in list {
                exchange.announce(&info);
            }
        }
        for (manifest, name) in partial::left_over(&exchange.shared.images.fetching_dir()) {
            tracing::info!(image = %manifest.file, "resuming an image fetch an earlier run left");
            exchange.begin(manifest.file.clone(), name, None);
        }
        exchange
    }

    /// Says in the DHT that this agent holds `info`.
    pub fn announce(&self, info: &ImageInfo) {
        let hex = info.hash.trim_start_matches(IMAGE_HASH_PREFIX);
        let _ = self.shared.overlay.send(ToOverlay::Provide(image_key(hex)));
        for name in &info.names {
            let _ = self.shared.overlay.send(ToOverlay::Provide(name_key(name)));
        }
    }

    /// Says in the DHT that this agent no longer holds `info` under the
    /// names `names` (all of it when `gone`).
    pub fn withdraw(&self, info: &ImageInfo, names: &[String], gone: bool) {
        if gone {
            let hex = info.hash.trim_start_matches(IMAGE_HASH_PREFIX);
            let _ = self.shared.overlay.send(ToOverlay::Unprovide(image_key(hex)));
        }
        for name in names {
            let _ = self.shared.overlay.send(ToOverlay::Unprovide(name_key(name)));
        }
    }

    /// Fetches `image` (a name or `sha256:<hex>`) from the agents that
    /// hold it, unless the store has it; only from `from` when given.
    pub async fn fetch(&self, image: &str, from: Option<CorePeer>) -> Result<Fetching, ImageError> {
        if let Ok(info) = self.shared.images.show(image) {
            return Ok(Fetching::Held(Box::new(info)));
        }
        let (hex, name) = match image.strip_prefix(IMAGE_HASH_PREFIX) {
            Some(hex) if valid_image_hash(hex) => (hex.to_owned(), None),
            None if valid_name(image) => (self.find(image, from.as_ref()).await?, Some(image.to_owned())),
            _ => return Err(ImageError::NotFound(image.to_owned())),
        };
        if let Ok(info) = self.shared.images.show(&format!("{IMAGE_HASH_PREFIX}{hex}")) {
            return Ok(Fetching::Held(Box::new(info)));
        }
        Ok(Fetching::Started(self.begin(hex, name, from)))
    }

    /// Makes sure the store holds `image`, fetching it if needed; returns
    /// once it does, or with why it cannot.
    pub async fn ensure(&self, image: &str) -> Result<(), ImageError> {
        let mut progress = match self.fetch(image, None).await? {
            Fetching::Held(_) => return Ok(()),
            Fetching::Started(rx) => rx,
        };
        loop {
            let t = progress.borrow_and_update().clone();
            match t.stage {
                Stage::Done => return Ok(()),
                Stage::Failed => {
                    return Err(ImageError::Upload(t.error.unwrap_or_else(|| "the fetch failed".into())));
                }
                _ => {}
            }
            if progress.changed().await.is_err() {
                // The fetch ended between two looks: the store tells.
                return self.shared.images.resolve(image).map(drop);
            }
        }
    }

    /// The fetch of image `hex`, started unless it runs.
    fn begin(&self, hex: String, name: Option<String>, from: Option<CorePeer>) -> watch::Receiver<Transfer> {
        let mut running = self.shared.running();
        if let Some(r) = running.get(&hex) {
            return r.progress.subscribe();
        }
        let (tx, rx) = watch::channel(Transfer {
            hash: format!("{IMAGE_HASH_PREFIX}{hex}"),
            name: name.clone(),
            stage: Stage::Finding,
            size_bytes: 0,
            chunks: 0,
            have_chunks: 0,
            holders: 0,
            sources: Vec::new(),
            elapsed_s: 0.0,
            error: None,
        });
        let (found, found_rx) = mpsc::unbounded_channel();
        let r = Arc::new(Running {
            partial: Default::default(),
            found,
            progress: tx,
            started: std::time::Instant::now(),
        });
        running.insert(hex.clone(), r.clone());
        drop(running);
        let shared = self.shared.clone();
        let _ = shared.overlay.send(ToOverlay::Provide(image_key(&hex)));
        tokio::spawn(async move {
            let started = r.started;
            let result = fetch::run(&shared, &r, found_rx, &hex, name.as_deref(), from).await;
            match &result {
                Ok(info) => {
                    tracing::info!(image = %info.hash, names = ?info.names, seconds = started.elapsed().as_secs_f64(), "image fetched");
                    Exchange { shared: shared.clone() }.announce(info);
                }
                Err(e) => {
                    tracing::warn!(image = %hex, error = %e, "image fetch failed");
                    if r.partial.get().is_none() {
                        let _ = shared.overlay.send(ToOverlay::Unprovide(image_key(&hex)));
                    }
                }
            }
            r.progress.send_modify(|t| {
                t.elapsed_s = started.elapsed().as_secs_f64();
                match &result {
                    Ok(_) => {
                        t.stage = Stage::Done;
                        t.have_chunks = t.chunks;
                    }
                    Err(e) => {
                        t.stage = Stage::Failed;
                        t.error = Some(e.to_string());
                    }
                }
            });
            let last = r.progress.borrow().clone();
            shared.running().remove(&hex);
            let mut ended = shared.ended.lock().unwrap_or_else(|e| e.into_inner());
            ended.push_front(last);
            ended.truncate(ENDED_KEPT);
        });
        rx
    }

    /// Which image the agents naming one `name` mean: the first answer,
    /// which comes from the nearest.
    async fn find(&self, name: &str, from: Option<&CorePeer>) -> Result<String, ImageError> {
        let holders = match from {
            Some(peer) => vec![peer.clone()],
            None => fetch::providers(&self.shared, name_key(name), std::time::Duration::from_secs(10)).await,
        };
        let mut asks = tokio::task::JoinSet::new();
        for peer in holders {
            let shared = self.shared.clone();
            let ask = wire::Ask::Find(name.to_owned());
            asks.spawn(async move { fetch::ask(&shared, &peer, &ask).await });
        }
        while let Some(answer) = asks.join_next().await {
            if let Ok(Ok(wire::Reply::Found(hex))) = answer
                && valid_image_hash(&hex)
            {
                return Ok(hex);
            }
        }
        Err(ImageError::Nowhere(name.to_owned()))
    }

    /// What this agent and every agent it is connected to hold (the
    /// overlay keeps a connection to every agent it knows, up to 128).
    pub async fn cluster(&self) -> Vec<wire::Inventory> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.shared.overlay.send(ToOverlay::Peers(tx));
        let peers = rx.await.unwrap_or_default();
        let mut asks = tokio::task::JoinSet::new();
        for peer in peers {
            let shared = self.shared.clone();
            asks.spawn(async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    fetch::ask(&shared, &peer, &wire::Ask::Inventory),
                )
                .await
            });
        }
        let mut out = vec![inventory(&self.shared)];
        while let Some(answer) = asks.join_next().await {
            if let Ok(Ok(Ok(wire::Reply::Inventory(i)))) = answer {
                out.push(i);
            }
        }
        out.sort_by(|a, b| (&a.pop, &a.host).cmp(&(&b.pop, &b.host)));
        out
    }

    /// Has every agent of PoP `pop` that this one is connected to fetch
    /// `image`; answers each agent's host and outcome.
    pub async fn prefetch(&self, image: &str, pop: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.shared.pop == pop {
            let outcome = match self.fetch(image, None).await {
                Ok(Fetching::Held(_)) => "held already".into(),
                Ok(Fetching::Started(_)) => "fetching".into(),
                Err(e) => e.to_string(),
            };
            out.push((self.shared.host.clone(), outcome));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.shared.overlay.send(ToOverlay::Peers(tx));
        let mut asks = tokio::task::JoinSet::new();
        for peer in rx.await.unwrap_or_default() {
            let shared = self.shared.clone();
            let (image, pop) = (image.to_owned(), pop.to_owned());
            asks.spawn(async move {
                let within = std::time::Duration::from_secs(15);
                let whose =
                    tokio::time::timeout(within, fetch::ask(&shared, &peer, &wire::Ask::Inventory)).await;
                let Ok(Ok(wire::Reply::Inventory(i))) = whose else { return None };
                if i.pop != pop {
                    return None;
                }
                let asked =
                    tokio::time::timeout(within, fetch::ask(&shared, &peer, &wire::Ask::Fetch(image))).await;
                Some((
                    i.host,
                    match asked {
                        Ok(Ok(wire::Reply::Fetching(outcome))) => outcome,
                        Ok(Ok(other)) => format!("answered {}", other.kind()),
                        Ok(Err(e)) => e,
                        Err(_) => "no answer within 15 s".into(),
                    },
                ))
            });
        }
        while let Some(done) = asks.join_next().await {
            if let Ok(Some(row)) = done {
                out.push(row);
            }
        }
        out.sort();
        out
    }

    /// This agent's fetches and uploads.
    pub fn list(&self) -> Transfers {
        let mut fetches: Vec<Transfer> = self
            .shared
            .running()
            .values()
            .map(|r| Transfer { elapsed_s: r.started.elapsed().as_secs_f64(), ..r.progress.borrow().clone() })
            .collect();
        fetches.sort_by(|a, b| a.hash.cmp(&b.hash));
        fetches.extend(self.shared.ended.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        let u = &self.shared.uploads;
        Transfers {
            fetches,
            uploaded_bytes: u.bytes(),
            uploaded_chunks: u.chunks(),
            busy: u.busy(),
            upload_limit_mbit: u.limit_mbit(),
        }
    }

    /// The fetch of image `hex`, if one runs.
    pub fn progress(&self, hex: &str) -> Option<Transfer> {
        self.shared.running().get(hex).map(|r| r.progress.borrow().clone())
    }
}
