//! What each policy instance's store holds, and the services the host
//! offers policies (`locus:policy/host`): logging and configuration.
//!
//! WASI is linked with an empty context because Rust's standard library
//! expects it (stdio, exit, environment, random seeds), but only those
//! interfaces: no clock, no filesystem, no sockets. A component that imports
//! any of them is refused when loaded.

use crate::bindings::locus::policy::{host, types};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Lines a policy may log per call; more are dropped.
pub const MAX_LOG_LINES_PER_CALL: u32 = 64;
/// Longest log line kept, in bytes.
pub const MAX_LOG_LINE: usize = 1024;
/// What a policy's stderr keeps (panic messages end up there).
const STDERR_CAPACITY: usize = 4096;

/// Per-store data of a policy instance.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) cap: MemoryCap,
    pub(crate) stderr: MemoryOutputPipe,
    policy: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    pub(crate) log_lines: u32,
}

impl State {
    pub fn new(policy: Arc<str>, config: Arc<BTreeMap<String, String>>, memory_cap: usize) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // Fixed seeds: a policy that asks for randomness gets the same
        // numbers every time, so its decisions stay replayable.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5a; 32]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0xa5; 32]))
            .insecure_random_seed(0x10c05)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            cap: MemoryCap { max: memory_cap, hit: None },
            stderr,
            policy,
            config,
            log_lines: 0,
        }
    }

    /// What the policy wrote to stderr, as text (a panic message, usually).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_owned()
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
    pub hit: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        if desired > self.max {
            self.hit = Some(desired);
            wasmtime::bail!("memory cap of {} MiB reached (asked for {} MiB)", self.max >> 20, desired >> 20);
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
        let message = locus_core::validate::truncate_message_to(message, MAX_LOG_LINE);
        let policy = &*self.policy;
        match level {
            host::Level::Debug => tracing::debug!(policy, "{message}"),
            host::Level::Info => tracing::info!(policy, "{message}"),
            host::Level::Warn => tracing::warn!(policy, "{message}"),
            host::Level::Error => tracing::error!(policy, "{message}"),
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
