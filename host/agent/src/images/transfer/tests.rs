//! The exchange's answers to peers, good and hostile, through its real
//! inbox and outbox (the overlay is a pair of channels here).

use super::wire::{Ask, Reply};
use super::*;
use crate::images::ImageConfig;
use crate::overlay::Service;
use std::time::Duration;

struct Fixture {
    _dir: tempfile::TempDir,
    images: Arc<Images>,
    asks: mpsc::UnboundedSender<Asked>,
    out: mpsc::UnboundedReceiver<ToOverlay>,
    next: u64,
}

impl Fixture {
    async fn new(config: ImageConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = Arc::new(Images::open(&dir.path().join("images"), config).expect("store"));
        let (overlay, out) = mpsc::unbounded_channel();
        let (asks, rx) = mpsc::unbounded_channel();
        Exchange::start(("h".into(), "p".into()), images.clone(), overlay, rx, CancellationToken::new());
        Fixture { _dir: dir, images, asks, out, next: 0 }
    }

    async fn import(&self, name: &str, bytes: Vec<u8>) -> ImageInfo {
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
        self.images.import(name, body).await.expect("import").0
    }

    /// Sends `bytes` as peer `from`'s question and returns the answer.
    async fn ask_raw(&mut self, from: &str, bytes: Vec<u8>) -> Reply {
        self.next += 1;
        let id = self.next;
        self.asks.send(Asked { from: CorePeer::from(from), id, bytes }).expect("send");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.out.recv())
                .await
                .expect("an answer in time")
                .expect("the exchange runs");
            if let ToOverlay::Answer(Service::Chunks, got, answer) = msg
                && got == id
            {
                return crate::overlay::codec::decode(&answer).expect("an answer that decodes");
            }
        }
    }

    async fn ask(&mut self, from: &str, ask: Ask) -> Reply {
        let bytes = crate::overlay::codec::encode(&ask).expect("encode");
        self.ask_raw(from, bytes).await
    }
}

fn image(mib: usize) -> Vec<u8> {
    (0..mib << 20).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_what_it_holds_and_refuses_the_rest_with_a_reason() {
    let mut f = Fixture::new(ImageConfig::default()).await;
    let bytes = image(3);
    let info = f.import("disk", bytes.clone()).await;
    let hex = info.hash.trim_start_matches("sha256:").to_owned();

    assert_eq!(f.ask("p", Ask::Find("disk".into())).await, Reply::Found(hex.clone()));
    let Reply::Have { manifest, bitmap } = f.ask("p", Ask::Have(hex.clone())).await else { panic!("a map") };
    assert_eq!(Some(manifest.clone()), info.manifest);
    assert_eq!(bitmap, None, "every chunk");
    let Reply::Manifest(m) = f.ask("p", Ask::Manifest(hex.clone())).await else { panic!("the manifest") };
    let m = crate::images::manifest::Manifest::decode(&m, &manifest).expect("it hashes to its id");
    let Reply::Chunk(c) = f.ask("p", Ask::Chunk(hex.clone(), 2)).await else { panic!("a chunk") };
    m.check(2, &c).expect("the chunk matches");
    assert_eq!(c, bytes[2 << 20..]);

    // Hostile or mistaken questions: nothing leaks, nothing breaks.
    for ask in [
        Ask::Find("../../etc/passwd".into()),
        Ask::Find("other".into()),
        Ask::Have("../../state.redb".into()),
        Ask::Have("ab".repeat(32)),
        Ask::Manifest("sha256:".to_owned() + &hex),
        Ask::Chunk(hex.clone(), 3),
        Ask::Chunk(hex.clone(), u64::MAX),
    ] {
        assert_eq!(f.ask("p", ask.clone()).await, Reply::Missing, "{ask:?}");
    }
    let garbage = f.ask_raw("p", b"\xff\x00not msgpack".to_vec()).await;
    assert!(matches!(garbage, Reply::Refused(ref why) if why.contains("/locus/chunks/1")), "{garbage:?}");
    assert_eq!(f.ask("p", Ask::Find("disk".into())).await, Reply::Found(hex), "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_paced_and_a_peer_past_its_share_of_the_queue_is_told_busy() {
    // 8 Mbit/s: a 1 MiB chunk every ~1 s after the first (the burst).
    let config = ImageConfig { upload_limit_mbit: 8, ..ImageConfig::default() };
    let mut f = Fixture::new(config).await;
    let info = f.import("disk", image(4)).await;
    let hex = info.hash.trim_start_matches("sha256:").to_owned();
    let started = std::time::Instant::now();
    for i in 0..3 {
        assert!(matches!(f.ask("p", Ask::Chunk(hex.clone(), i)).await, Reply::Chunk(_)));
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1800), "3 MiB at 8 Mbit/s take 2 s past the burst: {took:?}");

    // Three questions at once from one peer: two queue, the third is busy.
    for (id, i) in [(101, 0), (102, 1), (103, 2)] {
        let bytes = crate::overlay::codec::encode(&Ask::Chunk(hex.clone(), i)).expect("encode");
        f.asks.send(Asked { from: CorePeer::from("q"), id, bytes }).expect("send");
    }
    let mut answers = HashMap::new();
    while answers.len() < 3 {
        if let Some(ToOverlay::Answer(_, id, a)) = f.out.recv().await {
            answers.insert(id, crate::overlay::codec::decode::<Reply>(&a).expect("decode"));
        }
    }
    let busy = answers.values().filter(|a| **a == Reply::Busy).count();
    assert_eq!(busy, 1, "{:?}", answers.values().map(|a| matches!(a, Reply::Chunk(_))).collect::<Vec<_>>());
}
