//! The built-in Locus policies as WebAssembly components, compiled from
//! `policies/` by this crate's build script, plus the hostile components of
//! `tests/hostile/` that the runtime's tests attack it with.
//!
//! Built-ins are embedded so an agent needs no policy files to start; the
//! same bytes are written to `target/policies/NAME.wasm` for the CLI.

mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

pub use components::BUILTINS;

/// The built-in policies' components.
pub mod policies {
    pub use super::components::{BEST_FIT, CONSOLIDATE, FIRST_FIT, GREEN, NEAREST, RELIEVE_OVERLOAD, SPREAD};
}

/// Components that misbehave on purpose, for tests.
pub mod hostile {
    pub use super::components::{
        HOSTILE_BAD_INDEX as BAD_INDEX, HOSTILE_CLOCK as CLOCK, HOSTILE_HOG as HOG,
        HOSTILE_HUGE_LIST as HUGE_LIST, HOSTILE_MISBEHAVE as MISBEHAVE, HOSTILE_PANIC as PANIC,
        HOSTILE_SPIN as SPIN,
    };
}

/// The component of built-in policy `name`.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The names of the built-in policies.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(n, _)| *n)
}
