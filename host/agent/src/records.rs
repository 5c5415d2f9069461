//! The decision records this agent took ([`locus_core::record`]): the last
//! `[records] keep` of them, in memory for questions and in the state store
//! across restarts, and the answers `locus vm why` gathers from every agent
//! it reaches (a VM's placement is decided by an agent of its PoP, its
//! moves by its host or a rebalancing leader: none of them need be the
//! agent asked).

use crate::overlay::{Asked, Service, ToOverlay};
use crate::store::Store;
use anyhow::{Context, Result};
use locus_core::record::Record;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records of one VM an agent answers with at most (its newest).
pub const PER_VM: usize = 64;

/// How long `vm why` waits for each agent.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Agents asked at once.
const ASKING: usize = 32;

/// `[records]`: how many decision records the agent keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RecordsConfig {
    /// Records kept, newest; older ones are dropped (about 300 bytes each).
    pub keep: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig { keep: 10_000 }
    }
}

/// The records this agent keeps.
#[derive(Debug)]
pub struct Records {
    keep: usize,
    store: Arc<Store>,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// (sequence number, record), oldest first.
    recent: VecDeque<(u64, Record)>,
    next: u64,
}

/// What `vm why` answers: the records of one VM from every agent reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Why {
    /// The VM.
    pub vm: String,
    /// Its decision records, oldest first.
    pub records: Vec<Record>,
    /// Agents asked besides this one.
    pub asked: u32,
    /// Agents that answered.
    pub answered: u32,
}

impl Records {
    /// The records `store` kept, at most `keep`.
    pub fn open(store: Arc<Store>, keep: usize) -> Result<Self> {
        let stored: Vec<(u64, Record)> = store.records().context("reading decision records")?;
        let next = stored.last().map_or(0, |(seq, _)| seq + 1);
        let skip = stored.len().saturating_sub(keep);
        let recent = stored.into_iter().skip(skip).collect();
        Ok(Records { keep: keep.max(1), store, kept: Mutex::new(Kept { recent, next }) })
    }

    /// Keeps a round's records, stamped with the time now.
    pub fn add(&self, batch: Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let at_ms =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut numbered = Vec::with_capacity(batch.len());
        for mut r in batch {
            r.at_ms = at_ms;
            numbered.push((kept.next, r));
            kept.next += 1;
        }
        kept.recent.extend(numbered.iter().cloned());
        while kept.recent.len() > self.keep {
            kept.recent.pop_front();
        }
        let keep_from = kept.next.saturating_sub(self.keep as u64);
        drop(kept);
        // Records explain; they never hold up the node. A full disk loses
        // them (they are still answered from memory).
        if let Err(e) = tokio::task::block_in_place(|| self.store.put_records(&numbered, keep_from)) {
            tracing::warn!(error = %format!("{e:#}"), "decision records not stored");
        }
    }

    /// Makes the records written so far durable (at shutdown: those
    /// written since the last intent commit would be lost otherwise).
    pub fn flush(&self) {
        if let Err(e) = self.store.sync() {
            tracing::warn!(error = %format!("{e:#}"), "decision records not made durable");
        }
    }

    /// The newest records of `vm` (at most [`PER_VM`]), oldest first.
    pub fn of(&self, vm: &str) -> Vec<Record> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<Record> = kept
            .recent
            .iter()
            .rev()
            .filter(|(_, r)| r.vm == vm)
            .take(PER_VM)
            .map(|(_, r)| r.clone())
            .collect();
        found.reverse();
        found
    }

    /// The newest `n` records, newest first.
    pub fn latest(&self, n: usize) -> Vec<Record> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.recent.iter().rev().take(n).map(|(_, r)| r.clone()).collect()
    }
}

/// Answers other agents' questions for records until `cancel`.
pub fn serve(
    records: Arc<Records>,
    overlay: mpsc::UnboundedSender<ToOverlay>,
    mut asked: mpsc::UnboundedReceiver<Asked>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let a = tokio::select! {
                a = asked.recv() => match a { Some(a) => a, None => return },
                _ = cancel.cancelled() => return,
            };
            let answer = match rmp_serde::from_slice::<String>(&a.bytes) {
                Ok(vm) => records.of(&vm),
                Err(e) => {
                    tracing::debug!(peer = %a.from, error = %e, "undecodable question for decision records");
                    Vec::new()
                }
            };
            match rmp_serde::to_vec_named(&answer) {
                Ok(bytes) => {
                    let _ = overlay.send(ToOverlay::Answer(Service::Records, a.id, bytes));
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode decision records"),
            }
        }
    })
}

/// The records of `vm` here and at every agent connected.
pub async fn why(records: &Records, overlay: &mpsc::UnboundedSender<ToOverlay>, vm: &str) -> Why {
    use futures::StreamExt;
    let mut all = records.of(vm);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let peers = match overlay.send(ToOverlay::Peers(tx)) {
        Ok(()) => rx.await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let question = match rmp_serde::to_vec(vm) {
        Ok(q) => q,
        Err(_) => return Why { vm: vm.to_owned(), records: all, asked: 0, answered: 0 },
    };
    let asked = peers.len() as u32;
    let mut answers = futures::stream::iter(peers)
        .map(|peer| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sent = overlay.send(ToOverlay::Ask(Service::Records, peer, question.clone(), tx));
            async move {
                sent.ok()?;
                let bytes = tokio::time::timeout(ASK_TIMEOUT, rx).await.ok()?.ok()?.ok()?;
                let mut theirs: Vec<Record> = rmp_serde::from_slice(&bytes).ok()?;
                // Another agent answers for `vm` only, and with at most so many.
                theirs.retain(|r| r.vm == vm);
                theirs.truncate(PER_VM);
                Some(theirs)
            }
        })
        .buffer_unordered(ASKING);
    let mut answered = 0;
    while let Some(theirs) = answers.next().await {
        if let Some(theirs) = theirs {
            answered += 1;
            all.extend(theirs);
        }
    }
    all.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.host.cmp(&b.host)));
    Why { vm: vm.to_owned(), records: all, asked, answered }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(vm: &str) -> Record {
        let spec: locus_core::VmRequest =
            toml::from_str(&format!("name = '{vm}'\nvcpus = 1\nmemory-mib = 64")).expect("request");
        let decision = locus_core::Decision {
            outcome: locus_core::Outcome::Placed { host: locus_core::HostId(0) },
            decided_by: locus_core::DecidedBy::Filters,
            candidates: 1,
            excluded: Default::default(),
            scores: vec![],
            user_rtt_us: None,
        };
        Record::of(locus_core::record::Kind::Placement, &spec, &decision, |_| "h".into(), String::new())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Whatever the batches, the agent keeps exactly the newest `keep`
        /// records, answers for a VM with its own among them in order, and
        /// reads the same back after reopening.
        #[test]
        fn keeps_exactly_the_newest(
            keep in 1usize..12,
            batches in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..6), 0..8),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("state.redb");
            let all: Vec<String> = batches.iter().flatten().map(|v| format!("vm{v}")).collect();
            let newest: Vec<String> = all.iter().rev().take(keep).cloned().collect();
            {
                let store = Arc::new(Store::open(&path).expect("store"));
                let records = Records::open(store.clone(), keep).expect("records");
                for b in &batches {
                    records.add(b.iter().map(|v| record(&format!("vm{v}"))).collect());
                }
                let kept: Vec<String> = records.latest(usize::MAX).into_iter().map(|r| r.vm).collect();
                proptest::prop_assert_eq!(&kept, &newest);
                for v in 0..4 {
                    let vm = format!("vm{v}");
                    let mut own: Vec<String> = newest.iter().filter(|n| **n == vm).cloned().collect();
                    own.reverse();
                    let of: Vec<String> = records.of(&vm).into_iter().map(|r| r.vm).collect();
                    proptest::prop_assert_eq!(of, own);
                }
                records.flush();
            }
            let records = Records::open(Arc::new(Store::open(&path).expect("store")), keep).expect("records");
            let kept: Vec<String> = records.latest(usize::MAX).into_iter().map(|r| r.vm).collect();
            proptest::prop_assert_eq!(kept, newest);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn keeps_the_newest_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let store = Arc::new(Store::open(&path).expect("store"));
            let records = Records::open(store.clone(), 3).expect("records");
            records.add(vec![record("a"), record("b")]);
            records.add(vec![record("a"), record("c")]);
            assert_eq!(records.of("a").len(), 1, "the oldest record of a went");
            assert_eq!(records.latest(10).len(), 3);
            // An intent commit makes the records durable.
            store.apply(&[locus_core::intent::Change::Remove("x".into())]).expect("commit");
        }
        let store = Arc::new(Store::open(&path).expect("store"));
        let records = Records::open(store, 3).expect("records");
        let names: Vec<String> = records.latest(10).into_iter().map(|r| r.vm).collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert!(records.latest(1)[0].at_ms > 0, "stamped");
        records.add(vec![record("d")]);
        assert_eq!(records.latest(10).len(), 3);
    }
}
