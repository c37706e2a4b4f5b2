//! `manifest::parse_manifest` on arbitrary bytes: never panics, and a document it accepts yields
//! only well-formed sha256 references.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    checks::manifest(data);
});
