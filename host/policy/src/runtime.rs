//! The policy runtime: one wasmtime engine and linker for the process, the
//! epoch ticker that enforces call deadlines, and loading — every check a
//! component must pass before it may decide anything.

use crate::error::LoadError;
use crate::loaded::{CallLimits, Info, Loaded, World};
use crate::state::{self, State};
use crate::ticker::Ticker;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The version of `locus:policy` this runtime speaks.
pub const CONTRACT_VERSION: &str = "0.1.0";

/// Written linear memory an idle instance slot keeps mapped (wiped, not
/// unmapped) for the next instance, where the kernel reports written
/// pages. A 1,000-host decision writes well under this (its stack, the
/// view's columns, the answer); a larger working set keeps the first
/// megabyte and returns the rest.
const RESIDENT_PER_SLOT: usize = 1 << 20;
/// The same for an instance's tables (function references).
const RESIDENT_TABLE_PER_SLOT: usize = 64 << 10;

/// Runtime settings. The defaults suit an agent.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Wall-clock budget of one call (50 ms).
    pub deadline: Duration,
    /// Wall-clock budget of instantiating a policy, its start code
    /// included (1 s): rarer than calls, and it must not fail just because
    /// a busy machine descheduled the thread for a moment.
    pub instantiate_deadline: Duration,
    /// Most memory a policy instance may use (64 MiB).
    pub memory_cap: usize,
    /// Largest component accepted (16 MiB).
    pub max_component_size: usize,
    /// Period of the epoch ticker: how often a running guest looks at the
    /// clock, so deadlines hold to within about one tick (1 ms).
    pub tick: Duration,
    /// Policy instances that may exist at once, over all loaded versions
    /// (256): one per decision in flight. Each reserves address space, not
    /// memory.
    pub max_instances: u32,
    /// Replace every NaN a policy computes with the canonical one (false).
    /// Only bit-for-bit replay across machines needs it (the simulator); it
    /// costs about a tenth of a placement call.
    pub canonicalize_nans: bool,
    /// Meter guests by fuel (about one unit per WebAssembly instruction):
    /// each instantiation and each call gets this much, runs out of it
    /// deterministically, and reports what it used. For the simulator,
    /// which derives a decision's virtual duration from it; None (the
    /// agent): not metered, only the deadline holds.
    pub fuel: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            instantiate_deadline: Duration::from_secs(1),
            memory_cap: 64 << 20,
            max_component_size: 16 << 20,
            tick: Duration::from_millis(1),
            max_instances: 256,
            canonicalize_nans: false,
            fuel: None,
        }
    }
}

/// A component compiled ahead of time by this runtime, for fast activation.
/// Only [`Runtime::precompile`] makes one, which is what makes loading it
/// sound.
#[derive(Debug, Clone)]
pub struct Precompiled {
    artifact: Vec<u8>,
    hash: String,
    size: usize,
}

impl Precompiled {
    /// SHA-256 of the original component, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// Compiled components kept by content hash, so that loading the same
/// component again (another configuration, a push that returns to it) does
/// not compile it again. Each holds its machine code, a few MiB at most.
const COMPILED_KEPT: usize = 8;

/// Loads policies and runs them under limits. One per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    config: RuntimeConfig,
    ticker: Ticker,
    /// The components compiled last, newest last, by hash.
    compiled: std::sync::Mutex<Vec<(String, Component)>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime with `config`.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut c = Config::new();
        c.wasm_component_model(true);
        c.epoch_interruption(true);
        c.cranelift_nan_canonicalization(config.canonicalize_nans);
        c.consume_fuel(config.fuel.is_some());
        // Pooled instance slots: a fresh instance per decision then costs a
        // few microseconds instead of mapping and unmapping memory each
        // time. Where the kernel can report which pages a guest wrote
        // (PAGEMAP_SCAN, Linux 6.7+), only those pages are wiped and they
        // stay mapped, so the next instance in the slot takes no page
        // faults: a 1,000-host decision costs a third of what it does when
        // the slot's memory goes back to the kernel. Without it, memory is
        // returned to the kernel: wiping a fixed prefix instead was measured
        // slower, as a Rust guest's 1 MiB stack sits at the bottom of its
        // memory and the whole prefix would be wiped every time.
        let mut pool = PoolingAllocationConfig::default();
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(Enabled::Yes)
                .linear_memory_keep_resident(RESIDENT_PER_SLOT)
                .table_keep_resident(RESIDENT_TABLE_PER_SLOT);
        }
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(4))
            .total_memories(config.max_instances)
            .total_tables(config.max_instances.saturating_mul(2))
            .max_memory_size(config.memory_cap);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(anyhow::Error::from)?;
        let linker = state::linker(&engine).map_err(anyhow::Error::from)?;
        let ticker = Ticker::start(engine.clone(), config.tick)?;
        Ok(Self { engine, linker, config, ticker, compiled: std::sync::Mutex::default() })
    }

    /// The settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    fn limits(&self) -> CallLimits {
        CallLimits {
            deadline: self.config.deadline,
            instantiate_deadline: self.config.instantiate_deadline,
            memory_cap: self.config.memory_cap,
            fuel: self.config.fuel,
        }
    }

    /// Checks size and binary format, and hashes the bytes.
    fn screen(&self, bytes: &[u8]) -> Result<String, LoadError> {
        if bytes.len() > self.config.max_component_size {
            return Err(LoadError::TooLarge { size: bytes.len(), cap: self.config.max_component_size });
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm);
        }
        match [bytes[4], bytes[5], bytes[6], bytes[7]] {
            [1, 0, 0, 0] => return Err(LoadError::CoreModule),
            [0x0d, 0, 1, 0] => {}
            other => return Err(LoadError::UnknownVersion(other)),
        }
        Ok(hex::encode(Sha256::digest(bytes)))
    }

    /// Verifies, compiles and instantiates a component, ready to call.
    pub fn load(
        &self,
        bytes: &[u8],
        name: &str,
        config: BTreeMap<String, String>,
    ) -> Result<Arc<Loaded>, LoadError> {
        let hash = self.screen(bytes)?;
        let start = Instant::now();
        let component = match self.kept(&hash) {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, bytes).map_err(|e| self.compile_error(e))?;
                self.keep(&hash, &c);
                c
            }
        };
        self.finish(component, hash, bytes.len(), start.elapsed(), name, config)
    }

    fn kept(&self, hash: &str) -> Option<Component> {
        let kept = self.compiled.lock().ok()?;
        kept.iter().find(|(h, _)| h == hash).map(|(_, c)| c.clone())
    }

    fn keep(&self, hash: &str, component: &Component) {
        if let Ok(mut kept) = self.compiled.lock() {
            kept.retain(|(h, _)| h != hash);
            if kept.len() == COMPILED_KEPT {
                kept.remove(0);
            }
            kept.push((hash.to_owned(), component.clone()));
        }
    }

    /// Verifies and compiles a component without activating it, for a fast
    /// [`Runtime::load_precompiled`] later.
    pub fn precompile(&self, bytes: &[u8]) -> Result<Precompiled, LoadError> {
        let hash = self.screen(bytes)?;
        let artifact = self.engine.precompile_component(bytes).map_err(|e| self.compile_error(e))?;
        Ok(Precompiled { artifact, hash, size: bytes.len() })
    }

    /// Loads a component compiled by [`Runtime::precompile`].
    pub fn load_precompiled(
        &self,
        p: &Precompiled,
        name: &str,
        config: BTreeMap<String, String>,
    ) -> Result<Arc<Loaded>, LoadError> {
        let start = Instant::now();
        // SAFETY: `Precompiled` can only be made by `precompile` above, by an
        // engine of this very build; the artifact never left the process.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, &p.artifact) }
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        self.finish(component, p.hash.clone(), p.size, start.elapsed(), name, config)
    }

    /// A compile failure, in the operator's words where wasmtime's are about
    /// its own internals.
    fn compile_error(&self, e: wasmtime::Error) -> LoadError {
        let text = format!("{e:#}");
        // The pooling allocator refuses a memory whose initial size (data
        // segments included) is above the slot size, which is the cap.
        const MARK: &str = "memory has a minimum byte size of ";
        if let Some(at) = text.find(MARK) {
            let digits: String = text[at + MARK.len()..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(min) = digits.parse::<u64>() {
                return LoadError::MemoryTooLarge {
                    initial: crate::loaded::size(usize::try_from(min).unwrap_or(usize::MAX)),
                    cap: crate::loaded::size(self.config.memory_cap),
                };
            }
        }
        LoadError::Compile(text)
    }

    fn finish(
        &self,
        component: Component,
        hash: String,
        size: usize,
        compile_time: Duration,
        name: &str,
        config: BTreeMap<String, String>,
    ) -> Result<Arc<Loaded>, LoadError> {
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(n, _)| n.to_owned()).collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_owned()).collect();
        let world = detect_world(&exports)?;
        let forbidden = forbidden_imports(&imports);
        if !forbidden.is_empty() {
            return Err(LoadError::Forbidden(forbidden));
        }
        let pre =
            self.linker.instantiate_pre(&component).map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        let info = Info { name: name.to_owned(), hash, world, size, compile_time, imports, exports, config };
        let loaded = Loaded::new(info, pre, self.limits(), self.ticker.ticking())?;
        tracing::info!(policy = loaded.id(), world = world.as_str(), "policy loaded");
        Ok(Arc::new(loaded))
    }
}

/// Every import the host does not provide, each with what it would give
/// the policy.
fn forbidden_imports(imports: &[String]) -> Vec<String> {
    let what = |name: &str| {
        let family = name.split('/').next().unwrap_or(name);
        match family {
            "wasi:clocks" => "the clock: a decision must not depend on when it is taken",
            "wasi:filesystem" => "files",
            "wasi:sockets" | "wasi:http" => "the network",
            _ => "not offered to policies",
        }
    };
    imports
        .iter()
        .filter(|i| !state::PROVIDED.iter().any(|p| i.starts_with(p)))
        .map(|i| format!("{i} ({})", what(i)))
        .collect()
}

fn detect_world(exports: &[String]) -> Result<World, LoadError> {
    let placement = format!("locus:policy/placement@{CONTRACT_VERSION}");
    let migration = format!("locus:policy/migration@{CONTRACT_VERSION}");
    let has = |name: &str| exports.iter().any(|e| e == name);
    match (has(&placement), has(&migration)) {
        (true, true) => Ok(World::Scheduler),
        (true, false) => Ok(World::Placement),
        (false, true) => Ok(World::Migration),
        (false, false) => match exports.iter().find(|e| e.starts_with("locus:policy/")) {
            Some(other) => Err(LoadError::WrongVersion { found: other.clone() }),
            None => Err(LoadError::NoPolicyExport(exports.to_vec())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worlds_are_detected_by_their_exports() {
        let e = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(detect_world(&e(&["locus:policy/placement@0.1.0"])), Ok(World::Placement));
        assert_eq!(
            detect_world(&e(&["locus:policy/migration@0.1.0", "locus:policy/placement@0.1.0"])),
            Ok(World::Scheduler)
        );
        assert_eq!(
            detect_world(&e(&["locus:policy/placement@0.2.0"])).unwrap_err().to_string(),
            "component exports locus:policy/placement@0.2.0, but this agent speaks locus:policy@0.1.0"
        );
        assert!(matches!(detect_world(&e(&["run"])), Err(LoadError::NoPolicyExport(_))));
    }

    #[test]
    fn every_forbidden_import_is_named_with_what_it_gives() {
        let imports: Vec<String> = [
            "locus:policy/host@0.1.0",
            "wasi:cli/stdout@0.2.3",
            "wasi:clocks/wall-clock@0.2.3",
            "wasi:sockets/tcp@0.2.3",
            "wasi:filesystem/types@0.2.3",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            forbidden_imports(&imports),
            vec![
                "wasi:clocks/wall-clock@0.2.3 (the clock: a decision must not depend on when it is taken)",
                "wasi:sockets/tcp@0.2.3 (the network)",
                "wasi:filesystem/types@0.2.3 (files)",
            ]
        );
    }
}
