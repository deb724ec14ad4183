//! End-to-end and parity tests for Cinder; the tests live in `tests/tests/`, fixtures in
//! `tests/fixtures/`, and the scripts that regenerate fixtures in `tests/scripts/`.

use std::path::PathBuf;

/// The folder holding committed fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}
