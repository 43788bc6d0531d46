//! Helpers shared by the worker's integration tests.
#![allow(dead_code)] // each test binary uses some of them

use std::path::PathBuf;
use std::process::Command;

/// The `weft-worker` binary. nextest names it at run time; the compile-time path may be
/// another checkout's, since the build cache is shared between checkouts.
pub fn worker() -> Command {
    let bin = std::env::var_os("NEXTEST_BIN_EXE_weft-worker")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_weft-worker").into());
    Command::new(bin)
}

/// `manifests/examples`.
pub fn examples() -> PathBuf {
    weft_crds::repo_dir().join("manifests/examples")
}

/// The credit-card example's directory, as a string for arguments.
pub fn example() -> String {
    examples().join("credit-card").display().to_string()
}

/// What a metric record holds by qualifier (its steps, outcomes …), or `None` for a kind
/// without qualifiers (its `count`).
pub fn metric_values(
    record: &serde_json::Value,
) -> Option<&serde_json::Map<String, serde_json::Value>> {
    ["steps", "outcomes", "returns", "variants", "slaBreaches"]
        .iter()
        .find_map(|field| record[*field].as_object())
}

/// A metric record that holds nothing: no values (a record lists only those not all zero),
/// or a `count` of zero. Such a record reads as no record: whether a window that went back
/// to zero was emitted depends on the arrival order.
pub fn holds_nothing(record: &serde_json::Value) -> bool {
    match metric_values(record) {
        Some(values) => values.is_empty(),
        None => record["count"].as_i64().unwrap_or(0) == 0,
    }
}
