//! Hostile policy: answers with millions of migrations.
use locus_sdk::{Migration, MigrationPolicy, Partition};

pub struct HugeList;

impl MigrationPolicy for HugeList {
    fn plan(_: &Partition) -> Vec<Migration> {
        vec![Migration { vm: 0, to: 1 }; 1_000_000]
    }
}

locus_sdk::export!(migration: HugeList);
