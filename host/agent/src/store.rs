//! The agent's durable intent: requested VMs with their desired state, and
//! the policies loaded into its slots, in one redb file under the state
//! directory. Values are MessagePack in versioned envelopes, so a later
//! agent can read what an earlier one wrote.
//!
//! The store never decides anything: the node says what to write
//! ([`Change`]s) and the agent writes a round's changes in one transaction
//! before acting on them.

use anyhow::{Context, Result, bail};
use locus_core::intent::{Change, VmIntent};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");

/// The envelope version this agent writes.
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u8,
    value: T,
}

/// A policy loaded into a slot by an operator, kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// The name it was loaded under.
    pub name: String,
    /// Its configuration.
    pub config: BTreeMap<String, String>,
    /// The component (one MessagePack binary, not an array of numbers).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The open store.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) `path`. Fails if another agent has it open.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).with_context(|| {
            format!(
                "cannot open the state store {} (is another agent using this state directory?)",
                path.display()
            )
        })?;
        let txn = db.begin_write()?;
        txn.open_table(VMS)?;
        txn.open_table(POLICIES)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// Every stored VM intent.
    pub fn intents(&self) -> Result<Vec<VmIntent>> {
        let txn = self.db.begin_read()?;
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
        let txn = self.db.begin_write()?;
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

    /// The policy an operator loaded into `slot`, if any.
    pub fn policy(&self, slot: &str) -> Result<Option<StoredPolicy>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(POLICIES)?;
        let Some(value) = table.get(slot)? else {
            return Ok(None);
        };
        decode(value.value()).with_context(|| format!("stored policy of slot {slot}")).map(Some)
    }

    /// Remembers the policy loaded into `slot`.
    pub fn set_policy(&self, slot: &str, policy: &StoredPolicy) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(POLICIES)?.insert(slot, encode(policy)?.as_slice())?;
        txn.commit()?;
        Ok(())
    }
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
        let intent = |name: &str, desired| VmIntent {
            spec: VmRequest { name: name.into(), vcpus: 1, memory_mib: 64, ..VmRequest::default() },
            desired,
        };
        let policy = StoredPolicy { name: "p".into(), config: BTreeMap::new(), bytes: vec![0, 97, 115, 109] };
        {
            let store = Store::open(&path).expect("open");
            assert!(Store::open(&path).is_err(), "a second agent cannot open the same store");
            store
                .apply(&[
                    Change::Put(intent("a", Desired::Running)),
                    Change::Put(intent("b", Desired::Running)),
                    Change::Put(intent("a", Desired::Stopped)),
                    Change::Remove("b".into()),
                ])
                .expect("apply");
            store.set_policy("placement", &policy).expect("policy");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.intents().expect("intents"), vec![intent("a", Desired::Stopped)]);
        assert_eq!(store.policy("placement").expect("read"), Some(policy));
        assert_eq!(store.policy("migration").expect("read"), None);
    }
}
