//! Logging set-up shared by the operator and the worker: JSON in pods, human in a terminal.

/// Installs the global `tracing` subscriber writing to standard error, filtered by
/// `RUST_LOG` (default `info`). `format` is `json`, `text`, or `auto` (human on a terminal,
/// JSON otherwise).
pub fn init(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = format == "json" || (format == "auto" && !std::io::stderr().is_terminal());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
