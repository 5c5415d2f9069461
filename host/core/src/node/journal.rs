//! What the store holds for each VM, as far as the node knows, and the
//! writes of the current round that the shell has not confirmed yet.
//!
//! The node assumes its writes succeed and acts on them in the same round;
//! the shell makes them durable before it carries anything out. When it
//! cannot (a full disk), it says so with [`super::Input::NotRecorded`], and
//! this journal tells the node what each VM's intent was before the round,
//! so the node can put it back and answer the requests that depended on it.

use crate::intent::VmIntent;
use std::collections::BTreeMap;

/// The journal.
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// The intent the store holds, by VM (confirmed or assumed this round).
    stored: BTreeMap<String, VmIntent>,
    /// VMs written this round, with what the store held before (none: a
    /// VM the store never had).
    unconfirmed: BTreeMap<String, Option<VmIntent>>,
}

impl Journal {
    /// A journal for what the store held at start.
    pub(super) fn new<'a>(stored: impl IntoIterator<Item = &'a VmIntent>) -> Self {
        let stored = stored.into_iter().map(|i| (i.spec.name.clone(), i.clone())).collect();
        Journal { stored, unconfirmed: BTreeMap::new() }
    }

    /// `intent` is being written.
    pub(super) fn put(&mut self, intent: &VmIntent) {
        let name = &intent.spec.name;
        let before = self.stored.insert(name.clone(), intent.clone());
        self.unconfirmed.entry(name.clone()).or_insert(before);
    }

    /// The VM's record is being removed. A removal that is not recorded
    /// leaves a tombstone the next start forgets again, so it is not undone.
    pub(super) fn remove(&mut self, name: &str) {
        self.stored.remove(name);
        self.unconfirmed.remove(name);
    }

    /// The round's writes are durable.
    pub(super) fn confirmed(&mut self) {
        self.unconfirmed.clear();
    }

    /// The round's writes were lost: what each VM written had before.
    pub(super) fn lost(&mut self) -> BTreeMap<String, Option<VmIntent>> {
        let lost = std::mem::take(&mut self.unconfirmed);
        for (name, before) in &lost {
            match before {
                Some(i) => self.stored.insert(name.clone(), i.clone()),
                None => self.stored.remove(name),
            };
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmRequest;
    use crate::intent::Desired;

    fn intent(name: &str, desired: Desired) -> VmIntent {
        VmIntent::new(
            VmRequest { name: name.into(), vcpus: 1, memory_mib: 64, ..VmRequest::default() },
            desired,
        )
    }

    #[test]
    fn a_lost_round_gives_back_what_was_stored_before_it() {
        let mut j = Journal::new([&intent("old", Desired::Running)]);
        j.put(&intent("old", Desired::Stopped));
        j.put(&intent("old", Desired::Deleted));
        j.put(&intent("new", Desired::Running));
        let lost = j.lost();
        assert_eq!(lost["old"].as_ref().map(|i| i.desired), Some(Desired::Running), "the first before wins");
        assert_eq!(lost["new"], None);
        assert!(j.lost().is_empty(), "taken once");

        j.put(&intent("old", Desired::Stopped));
        j.confirmed();
        j.put(&intent("old", Desired::Deleted));
        assert_eq!(
            j.lost()["old"].as_ref().map(|i| i.desired),
            Some(Desired::Stopped),
            "confirmed rounds stay"
        );
    }
}
