//! The agent's durable intent: requested VMs with their desired state, and
//! each policy slot's active and earlier versions (components stored once
//! by content hash), in one redb file under the state directory. Values are MessagePack in versioned envelopes, so a later
//! agent can read what an earlier one wrote.
//!
//! The store never decides anything: the node says what to write
//! ([`Change`]s) and the agent writes a round's changes in one transaction
//! before acting on them.

use anyhow::{Context, Result, bail};
use locus_core::intent::{Change, VmIntent};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
/// Written by agents before slot history existed: slot → one StoredPolicy.
const OLD_POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
/// slot → [`StoredSlot`].
const SLOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("policy-slots");
/// SHA-256 (hex) → component bytes, for every version a slot refers to.
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("policy-blobs");

/// Every policy push known (`rollout::table`): one value, the whole table.
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("policy-rollouts");
/// SHA-256 (hex) of a bundle file → its bytes, for the pushes the table names.
const BUNDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("policy-bundles");

/// Sequence number → a decision record ([`crate::records`]), oldest first.
const DECISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("decisions");

/// The envelope version this agent writes.
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u8,
    value: T,
}

/// A policy loaded into a slot by an operator, as older agents kept it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredPolicy {
    name: String,
    config: BTreeMap<String, String>,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

/// One version of a policy: its component (by hash), name and configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The name it was loaded under.
    pub name: String,
    /// SHA-256 of the component, hex; the bytes are in the blob table.
    pub hash: String,
    /// Its configuration.
    pub config: BTreeMap<String, String>,
}

/// What a slot held, kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredSlot {
    /// The active version; `None` when it is the configured default.
    pub active: Option<Version>,
    /// Earlier versions, newest first.
    pub history: Vec<Version>,
}

/// The open store. After a failed write redb refuses everything until the
/// database is opened again ("Previous I/O error"), so a failure closes it
/// and the next use reopens it: a full disk costs the writes made while it
/// is full, not the store.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: Mutex<Option<Database>>,
}

/// True when `e` comes from a full filesystem (or a quota). redb's storage
/// errors do not expose the `io::Error` they wrap as a source, so the OS
/// error number in the message is what identifies it.
pub fn is_no_space(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(crate::images::is_no_space))
        || text.contains("(os error 28)")
        || text.contains("(os error 122)")
}

impl Store {
    /// Opens (or creates) `path`. Fails if another agent has it open.
    pub fn open(path: &Path) -> Result<Self> {
        let db = open_db(path)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        Ok(Store { path: path.to_owned(), db: Mutex::new(Some(db)) })
    }

    /// Runs `f` on the database, opening it again first if an earlier
    /// failure closed it, and closing it if `f` fails.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let mut guard = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let db = match guard.take() {
            Some(db) => db,
            None => open_db(&self.path)?,
        };
        let result = f(&db);
        if result.is_ok() {
            *guard = Some(db);
        }
        result
    }

    /// Every stored VM intent.
    pub fn intents(&self) -> Result<Vec<VmIntent>> {
        self.with(Self::read_intents)
    }

    fn read_intents(db: &Database) -> Result<Vec<VmIntent>> {
        let txn = db.begin_read()?;
        let table = txn.open_table(VMS)?;
        let mut out = vec![];
        for row in table.iter()? {
            let (key, value) = row?;
            out.push(decode(value.value()).with_context(|| format!("stored vm {:?}", key.value()))?);
        }
        Ok(out)
    }

    /// Applies a round of changes in one durable transaction.
    pub fn apply(&self, changes: &[Change]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.with(|db| Self::write_changes(db, changes))
    }

    fn write_changes(db: &Database, changes: &[Change]) -> Result<()> {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(VMS)?;
            for change in changes {
                match change {
                    Change::Put(intent) => {
                        table.insert(intent.spec.name.as_str(), encode(intent)?.as_slice())?;
                    }
                    Change::Remove(name) => {
                        table.remove(name.as_str())?;
                    }
                }
            }
        }
        txn.commit().context("committing intent")?;
        Ok(())
    }

    /// What `slot` held, with the bytes of every version it names that is
    /// still stored (a missing blob leaves its version out, reported by the
    /// caller's load). Reads what older agents kept, when that is all there is.
    pub fn slot(&self, slot: &str) -> Result<(StoredSlot, BTreeMap<String, Vec<u8>>)> {
        self.with(|db| Self::read_slot(db, slot))
    }

    fn read_slot(db: &Database, slot: &str) -> Result<(StoredSlot, BTreeMap<String, Vec<u8>>)> {
        let txn = db.begin_read()?;
        let slots = txn.open_table(SLOTS)?;
        let blobs = txn.open_table(BLOBS)?;
        let Some(value) = slots.get(slot)? else {
            return Self::old_slot(&txn, slot);
        };
        let stored: StoredSlot =
            decode(value.value()).with_context(|| format!("stored policies of slot {slot}"))?;
        let mut bytes = BTreeMap::new();
        for v in stored.active.iter().chain(&stored.history) {
            if let Some(b) = blobs.get(v.hash.as_str())? {
                bytes.insert(v.hash.clone(), b.value().to_vec());
            }
        }
        Ok((stored, bytes))
    }

    fn old_slot(txn: &redb::ReadTransaction, slot: &str) -> Result<(StoredSlot, BTreeMap<String, Vec<u8>>)> {
        let table = match txn.open_table(OLD_POLICIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
            Err(e) => return Err(e.into()),
        };
        let Some(value) = table.get(slot)? else {
            return Ok(Default::default());
        };
        let old: StoredPolicy =
            decode(value.value()).with_context(|| format!("stored policy of slot {slot}"))?;
        let hash = hex::encode(sha2::Sha256::digest(&old.bytes));
        let version = Version { name: old.name, hash: hash.clone(), config: old.config };
        Ok((StoredSlot { active: Some(version), history: vec![] }, BTreeMap::from([(hash, old.bytes)])))
    }

    /// Records what `slot` holds now, storing the bytes of versions not
    /// stored yet (`new_bytes`: hash and bytes) and dropping blobs no slot
    /// names.
    pub fn set_slot(&self, slot: &str, stored: &StoredSlot, new_bytes: &[(&str, &[u8])]) -> Result<()> {
        self.with(|db| Self::write_slot(db, slot, stored, new_bytes))
    }

    fn write_slot(db: &Database, slot: &str, stored: &StoredSlot, new_bytes: &[(&str, &[u8])]) -> Result<()> {
        let txn = db.begin_write()?;
        {
            let mut slots = txn.open_table(SLOTS)?;
            slots.insert(slot, encode(stored)?.as_slice())?;
            let mut named = std::collections::BTreeSet::new();
            for row in slots.iter()? {
                let (_, value) = row?;
                let s: StoredSlot = decode(value.value())?;
                named.extend(s.active.into_iter().chain(s.history).map(|v| v.hash));
            }
            let mut blobs = txn.open_table(BLOBS)?;
            for &(hash, bytes) in new_bytes {
                if named.contains(hash) && blobs.get(hash)?.is_none() {
                    blobs.insert(hash, bytes)?;
                }
            }
            drop_unnamed(&mut blobs, &named)?;
        }
        txn.commit().context("committing the policy slot")?;
        Ok(())
    }
}

impl Store {
    /// The pushes known, as last stored.
    pub fn rollouts<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<T>> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(table) = optional(txn.open_table(ROLLOUTS))? else { return Ok(Vec::new()) };
            match table.get("table")? {
                Some(v) => decode(v.value()).context("stored policy pushes"),
                None => Ok(Vec::new()),
            }
        })
    }

    /// Stores the pushes known and drops the bundles none of them names.
    pub fn set_rollouts<T: Serialize>(
        &self,
        records: &[T],
        named: &std::collections::BTreeSet<String>,
    ) -> Result<()> {
        self.with(|db| {
            let txn = db.begin_write()?;
            {
                txn.open_table(ROLLOUTS)?.insert("table", encode(&records)?.as_slice())?;
                drop_unnamed(&mut txn.open_table(BUNDLES)?, named)?;
            }
            txn.commit().context("committing the policy pushes")
        })
    }

    /// Stores a bundle file under its hash.
    pub fn put_bundle(&self, hash: &str, bytes: &[u8]) -> Result<()> {
        self.with(|db| {
            let txn = db.begin_write()?;
            txn.open_table(BUNDLES)?.insert(hash, bytes)?;
            txn.commit().context("committing the bundle")
        })
    }

    /// A stored bundle file.
    pub fn bundle(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(table) = optional(txn.open_table(BUNDLES))? else { return Ok(None) };
            Ok(table.get(hash)?.map(|v| v.value().to_vec()))
        })
    }

    /// Hashes of the stored bundles.
    pub fn bundle_hashes(&self) -> Result<Vec<String>> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(table) = optional(txn.open_table(BUNDLES))? else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in table.iter()? {
                out.push(row?.0.value().to_owned());
            }
            Ok(out)
        })
    }
}

impl Store {
    /// Adds decision records (by sequence number) and drops those numbered
    /// below `keep_from`. Not durable by itself: the next intent commit
    /// makes it so, and a crash before that loses only these records, never
    /// intent (and costs no fsync per decision).
    pub fn put_records<T: Serialize>(&self, records: &[(u64, T)], keep_from: u64) -> Result<()> {
        self.with(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::None)?;
            {
                let mut table = txn.open_table(DECISIONS)?;
                for (seq, r) in records {
                    table.insert(*seq, encode(r)?.as_slice())?;
                }
                table.retain_in(..keep_from, |_, _| false)?;
            }
            txn.commit().context("committing decision records")
        })
    }

    /// Makes what earlier non-durable commits wrote durable (an empty
    /// durable commit).
    pub fn sync(&self) -> Result<()> {
        self.with(|db| db.begin_write()?.commit().context("committing"))
    }

    /// Every stored decision record, oldest first; records this agent
    /// cannot read are skipped.
    pub fn records<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<(u64, T)>> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(table) = optional(txn.open_table(DECISIONS))? else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for row in table.iter()? {
                let (seq, bytes) = row?;
                if let Ok(r) = decode(bytes.value()) {
                    out.push((seq.value(), r));
                }
            }
            Ok(out)
        })
    }
}

/// Removes the rows of a hash-keyed table (components, bundles) whose key
/// `named` does not hold.
fn drop_unnamed(
    table: &mut redb::Table<'_, &str, &[u8]>,
    named: &std::collections::BTreeSet<String>,
) -> Result<()> {
    let unnamed: Vec<String> = table
        .iter()?
        .filter_map(|row| row.ok().map(|(k, _)| k.value().to_owned()))
        .filter(|h| !named.contains(h))
        .collect();
    for hash in unnamed {
        table.remove(hash.as_str())?;
    }
    Ok(())
}

/// A table that an agent older than the table never created reads as empty.
fn optional<T>(t: std::result::Result<T, redb::TableError>) -> Result<Option<T>> {
    match t {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens the database and makes sure its tables exist.
fn open_db(path: &Path) -> Result<Database> {
    let db = Database::create(path).with_context(|| {
        format!(
            "cannot open the state store {} (is another agent using this state directory?)",
            path.display()
        )
    })?;
    let txn = db.begin_read()?;
    let missing = [VMS, SLOTS, BLOBS].iter().any(|t| txn.open_table(*t).is_err());
    drop(txn);
    // Only a new store is written to here: a full disk must not keep an
    // existing one from opening.
    if missing {
        let txn = db.begin_write()?;
        txn.open_table(VMS)?;
        txn.open_table(SLOTS)?;
        txn.open_table(BLOBS)?;
        txn.commit()?;
    }
    Ok(db)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(&Envelope { version: VERSION, value })?)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    let envelope: Envelope<T> = rmp_serde::from_slice(bytes)?;
    if envelope.version != VERSION {
        bail!("written by a newer agent (format {}, this agent reads {VERSION})", envelope.version);
    }
    Ok(envelope.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_core::VmRequest;
    use locus_core::intent::Desired;

    #[test]
    fn intent_and_policies_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let intent = |name: &str, desired| {
            VmIntent::new(
                VmRequest { name: name.into(), vcpus: 1, memory_mib: 64, ..VmRequest::default() },
                desired,
            )
        };
        let v = |name: &str, hash: &str| Version {
            name: name.into(),
            hash: hash.into(),
            config: BTreeMap::new(),
        };
        let slot = StoredSlot { active: Some(v("p", "aa")), history: vec![v("q", "bb")] };
        let bytes: [(&str, &[u8]); 3] = [("aa", &[1]), ("bb", &[2]), ("cc", &[3])];
        {
            let store = Store::open(&path).expect("open");
            assert!(Store::open(&path).is_err(), "a second agent cannot open the same store");
            store
                .apply(&[
                    Change::Put(Box::new(intent("a", Desired::Running))),
                    Change::Put(Box::new(intent("b", Desired::Running))),
                    Change::Put(Box::new(intent("a", Desired::Stopped))),
                    Change::Remove("b".into()),
                ])
                .expect("apply");
            store.set_slot("placement", &slot, &bytes).expect("policy");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.intents().expect("intents"), vec![intent("a", Desired::Stopped)]);
        let (read, blobs) = store.slot("placement").expect("read");
        assert_eq!(read, slot);
        assert_eq!(blobs.keys().collect::<Vec<_>>(), ["aa", "bb"], "unnamed blobs are not kept");
        assert_eq!(store.slot("migration").expect("read").0, StoredSlot::default());
        // Rolling back drops nothing still named; a version no slot names goes.
        let rolled = StoredSlot { active: Some(v("q", "bb")), history: vec![] };
        store.set_slot("placement", &rolled, &[]).expect("rollback");
        assert_eq!(store.slot("placement").expect("read").1.keys().collect::<Vec<_>>(), ["bb"]);
    }
}
