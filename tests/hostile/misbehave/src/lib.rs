//! Hostile policy with many faces, chosen by its `do` configuration entry,
//! for the agent-level hostile suite: each misbehaviour a policy author
//! could ship by accident or on purpose.
//!
//! - `stdout`, `stderr`: print (a line break and a forged log line inside),
//!   then decide normally.
//! - `panic-every-third`: panics on every third call it sees; with a fresh
//!   instance per decision it never sees a third.
//! - `spin`: burns `iterations` loop turns, then decides.
//! - `ten-million-scores`: answers with ten million scores.
//! - `log-escapes`: logs lines with a newline and terminal escapes.
//! - `reject-escapes`: rejects with terminal escapes in the message.
//! - `count-calls`: chooses row (calls so far mod hosts): the same row on
//!   every call only if no state survives between calls.
use locus_sdk::{
    Cluster, Level, Placement, PlacementPolicy, RejectReason, Request, Score, config, config_or, log,
};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Misbehave;

static CALLS: AtomicU64 = AtomicU64::new(0);

impl PlacementPolicy for Misbehave {
    fn place(cluster: &Cluster, _: &Request) -> Placement {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        match config("do").as_deref() {
            Some("stdout") => println!("policy says hi\nINFO locus: forged line \u{1b}[2J"),
            Some("stderr") => eprintln!("policy complains\nERROR locus: forged line \u{1b}[31m"),
            Some("panic-every-third") if calls.is_multiple_of(3) => panic!("third call: {calls}"),
            Some("spin") => {
                let mut x = 0u64;
                for i in 0..config_or::<u64>("iterations", 1_000_000) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                std::hint::black_box(x);
            }
            Some("ten-million-scores") => {
                let scores = (0..10_000_000).map(|i| Score { host: i % 7, value: 1.0 }).collect();
                return Placement::on_with_scores(0, scores);
            }
            Some("log-escapes") => {
                log(Level::Warn, "first line\nINFO locus: forged agent line");
                log(Level::Error, "\u{1b}[2J\u{1b}[Hscreen cleared");
            }
            Some("reject-escapes") => {
                return Placement::reject(RejectReason::Other, "\u{1b}[2J\u{1b}[Hfake: all VMs deleted\nok");
            }
            Some("count-calls") => return Placement::on(((calls - 1) % cluster.hosts.len() as u64) as u32),
            _ => {}
        }
        Placement::on(0)
    }
}

locus_sdk::export!(placement: Misbehave);
