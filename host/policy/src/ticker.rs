//! The epoch ticker: while a guest runs, it advances the engine's epoch
//! every tick, so the guest stops to look at the wall clock (its call's
//! deadline); while none runs, it sleeps. An agent's policies run for
//! milliseconds now and then, and a ticker that woke every millisecond
//! regardless cost each idle agent a thousand wake-ups a second (0.6 % of
//! a core: a 50-agent cluster on one machine spent a third of a core on
//! them).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;
use wasmtime::Engine;

/// The thread, stopped and joined when dropped. One per runtime.
pub(crate) struct Ticker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Guests running now (instances alive, whether instantiating or called).
    running: AtomicUsize,
    stop: AtomicBool,
    /// Epochs advanced so far.
    ticks: AtomicU64,
    /// The ticker's thread, to wake it.
    thread: OnceLock<Thread>,
}

impl Shared {
    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Lets a loaded policy say that one of its instances runs.
#[derive(Clone)]
pub(crate) struct Ticking(Arc<Shared>);

/// An instance that runs: the ticker ticks until every one is dropped.
pub(crate) struct Running(Arc<Shared>);

impl Ticker {
    /// Starts the thread for `engine`, ticking every `tick` while a guest runs.
    pub(crate) fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("locus-epoch".into()).spawn(move || {
            while !s.stop.load(Ordering::Acquire) {
                if s.running.load(Ordering::Acquire) == 0 {
                    // Woken by the first instance to run (an unpark that
                    // comes before the park is not lost) or by the drop.
                    std::thread::park();
                    continue;
                }
                std::thread::sleep(tick);
                engine.increment_epoch();
                s.ticks.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        let _ = shared.thread.set(thread.thread().clone());
        Ok(Ticker { shared, thread: Some(thread) })
    }

    /// What loaded policies hold to say an instance runs.
    pub(crate) fn ticking(&self) -> Ticking {
        Ticking(self.shared.clone())
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Ticking {
    /// One more instance runs until the guard is dropped.
    pub(crate) fn running(&self) -> Running {
        if self.0.running.fetch_add(1, Ordering::AcqRel) == 0 {
            self.0.wake();
        }
        Running(self.0.clone())
    }

    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.0.ticks.load(Ordering::Relaxed)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Ticking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticking").field("running", &self.0.running.load(Ordering::Relaxed)).finish()
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_ticks_only_while_an_instance_runs_and_stops_when_dropped() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("engine");
        let ticker = Ticker::start(engine, Duration::from_millis(1)).expect("ticker");
        let ticking = ticker.ticking();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticking.ticks(), 0, "idle: asleep");
        let (a, b) = (ticking.running(), ticking.running());
        std::thread::sleep(Duration::from_millis(30));
        drop(a);
        let one_left = ticking.ticks();
        assert!(one_left > 0, "running: ticking");
        std::thread::sleep(Duration::from_millis(30));
        assert!(ticking.ticks() > one_left, "one instance still runs");
        drop(b);
        std::thread::sleep(Duration::from_millis(10));
        let after = ticking.ticks();
        std::thread::sleep(Duration::from_millis(30));
        assert!(ticking.ticks() <= after + 1, "none runs: at most the tick under way");
        drop(ticker);
    }
}
