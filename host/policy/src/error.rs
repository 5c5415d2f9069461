//! Why a component was refused at load time. Each message says what is wrong
//! in terms a policy author can act on.

use std::fmt;

/// A refused component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Larger than the configured cap.
    #[error("component is {size} bytes, above the {cap}-byte cap")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// Not WebAssembly at all.
    #[error("not a WebAssembly component: the file does not start with the wasm magic bytes \\0asm")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build the policy for the wasm32-wasip2 target (cargo build --target wasm32-wasip2)"
    )]
    CoreModule,
    /// Some other binary format version.
    #[error("unsupported WebAssembly binary version/layer {0:02x?}")]
    UnknownVersion([u8; 4]),
    /// Decoding, validation or compilation failed.
    #[error("component does not compile: {0}")]
    Compile(String),
    /// Built against another version of the contract.
    #[error("component exports {found}, but this agent speaks locus:policy@{}", crate::CONTRACT_VERSION)]
    WrongVersion {
        /// The export found.
        found: String,
    },
    /// Exports neither capability.
    #[error(
        "component exports neither locus:policy/placement@{v} nor locus:policy/migration@{v} (it exports: {exports})",
        v = crate::CONTRACT_VERSION,
        exports = List(.0)
    )]
    NoPolicyExport(Vec<String>),
    /// Its linear memory starts larger than the memory cap.
    #[error(
        "the component's linear memory starts at {initial} (its data segments and declared minimum), above the policy memory cap of {cap}"
    )]
    MemoryTooLarge {
        /// The initial size.
        initial: String,
        /// The cap.
        cap: String,
    },
    /// Imports interfaces the host does not provide to policies.
    #[error(
        "component imports what policies may not use: {}; a policy may import only locus:policy/host and the wasi:cli, wasi:io and wasi:random interfaces Rust's standard library needs",
        .0.join(", ")
    )]
    Forbidden(Vec<String>),
    /// Imports something the host does not provide in the form it wants.
    #[error("component imports what policies may not use: {0}")]
    Imports(String),
    /// Could not be instantiated (a start function trapped, a type mismatch).
    #[error("component cannot be instantiated: {0}")]
    Instantiate(String),
}

struct List<'a>(&'a [String]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("nothing") } else { f.write_str(&self.0.join(", ")) }
    }
}
