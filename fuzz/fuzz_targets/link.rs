//! Link files and storage keys: `layout::parse_link` on arbitrary bytes, and the key parsers
//! (`parse_repository_key`, `parse_blob_key`, `removable_parents`) on the same bytes as a key.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    checks::link(data);
});
