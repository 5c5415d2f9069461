//! The built-in policies compiled natively, found by their component's
//! bytes, for baselines measured beside the WebAssembly version.

use locus_core::Native;

/// The native build of the built-in policy whose component is `bytes`.
pub fn native(bytes: &[u8]) -> Option<Native> {
    let name = locus_builtin::BUILTINS.iter().find(|(_, b)| *b == bytes).map(|(n, _)| *n)?;
    Some(match name {
        "first-fit" => Native::placement::<policy_first_fit::FirstFit>("first-fit"),
        "best-fit" => Native::placement::<policy_best_fit::BestFit>("best-fit"),
        "spread" => Native::placement::<policy_spread::Spread>("spread"),
        "nearest" => Native::placement::<policy_nearest::Nearest>("nearest"),
        "green" => Native::placement::<policy_green::Green>("green"),
        "relieve-overload" => {
            Native::migration::<policy_relieve_overload::RelieveOverload>("relieve-overload")
        }
        "consolidate" => Native::migration::<policy_consolidate::Consolidate>("consolidate"),
        _ => return None,
    })
}
