//! What each policy instance's store holds, and the services the host
//! offers policies (`locus:policy/host`): logging and configuration.
//!
//! WASI is linked with an empty context because Rust's standard library
//! expects it (stdio, exit, environment, random seeds), but only those
//! interfaces: no clock, no filesystem, no sockets. A component that imports
//! any of them is refused when loaded. Its stdout and stderr are captured in
//! memory ([`Capture`]), never written to the agent's own streams.

use crate::bindings::locus::policy::{host, types};
use crate::output::Capture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Lines a policy may log per call; more are counted and dropped.
pub const MAX_LOG_LINES_PER_CALL: u32 = 64;
/// Longest log line kept, in bytes.
pub const MAX_LOG_LINE: usize = 1024;

/// Per-store data of a policy instance (one instance, one decision).
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) cap: MemoryCap,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
    /// When the guest must be stopped (checked on every epoch tick).
    pub(crate) deadline: Instant,
    /// Set when the deadline stopped the guest.
    pub(crate) timed_out: bool,
    policy: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    log_lines: u32,
}

impl State {
    pub fn new(
        policy: Arc<str>,
        config: Arc<BTreeMap<String, String>>,
        memory_cap: usize,
        deadline: Instant,
    ) -> Self {
        let (stdout, stderr) = (Capture::default(), Capture::default());
        // Fixed seeds: a policy that asks for randomness gets the same
        // numbers every time, so its decisions stay replayable.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5a; 32]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0xa5; 32]))
            .insecure_random_seed(0x10c05)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            cap: MemoryCap { max: memory_cap, hit: None },
            stdout,
            stderr,
            deadline,
            timed_out: false,
            policy,
            config,
            log_lines: 0,
        }
    }

    /// What the policy printed, both streams, labelled; empty if nothing.
    pub fn output(&self) -> String {
        let (out, err) = (self.stdout.text(), self.stderr.text());
        match (out.is_empty(), err.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!("stdout: {out}"),
            (true, false) => format!("stderr: {err}"),
            (false, false) => format!("stdout: {out}; stderr: {err}"),
        }
    }

    /// Log lines dropped because the call went past the per-call limit.
    pub fn dropped_log_lines(&self) -> u32 {
        self.log_lines.saturating_sub(MAX_LOG_LINES_PER_CALL)
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Refuses memory growth past the cap and remembers that it did, so the
/// resulting trap is reported as a memory-cap failure.
pub struct MemoryCap {
    pub max: usize,
    /// The size asked for when the cap was hit.
    pub hit: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        if desired > self.max {
            self.hit = Some(desired);
            wasmtime::bail!("memory cap reached");
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

impl types::Host for State {}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let text = locus_core::validate::truncate_message_to(message, MAX_LOG_LINE);
        // The text is the policy's: a field, Debug-escaped, so a newline or
        // a terminal escape in it cannot forge or hide agent log lines.
        let policy = &*self.policy;
        match level {
            host::Level::Debug => tracing::debug!(policy, text = ?text, "policy log"),
            host::Level::Info => tracing::info!(policy, text = ?text, "policy log"),
            host::Level::Warn => tracing::warn!(policy, text = ?text, "policy log"),
            host::Level::Error => tracing::error!(policy, text = ?text, "policy log"),
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

struct Io;
impl HasData for Io {
    type Data<'a> = &'a mut ResourceTable;
}

/// Interfaces the linker provides, by prefix: anything else a component
/// imports is refused at load time, by name.
pub const PROVIDED: &[&str] = &["locus:policy/", "wasi:cli/", "wasi:io/", "wasi:random/"];

/// The linker every policy is instantiated with.
pub fn linker(engine: &wasmtime::Engine) -> Result<Linker<State>> {
    use wasmtime_wasi::p2::bindings::{cli, random, sync};
    let mut l = Linker::new(engine);
    crate::bindings::SchedulerPolicy::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
        &mut l,
        |s| s,
    )?;
    sync::io::error::add_to_linker::<State, Io>(&mut l, |s| &mut s.table)?;
    sync::io::poll::add_to_linker::<State, Io>(&mut l, |s| &mut s.table)?;
    sync::io::streams::add_to_linker::<State, Io>(&mut l, |s| &mut s.table)?;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    cli::exit::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::environment::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::stdin::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::stdout::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::stderr::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::terminal_input::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::terminal_output::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::terminal_stdin::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::terminal_stdout::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    cli::terminal_stderr::add_to_linker::<State, WasiCli>(&mut l, State::cli)?;
    use wasmtime_wasi::random::WasiRandom;
    random::random::add_to_linker::<State, WasiRandom>(&mut l, |s| s.wasi.random())?;
    random::insecure::add_to_linker::<State, WasiRandom>(&mut l, |s| s.wasi.random())?;
    random::insecure_seed::add_to_linker::<State, WasiRandom>(&mut l, |s| s.wasi.random())?;
    Ok(l)
}
