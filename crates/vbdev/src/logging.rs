//! The tracing subscriber: stderr, EnvFilter syntax from `--log`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; a bad filter falls back to `warn` with a note.
pub fn init(filter: &str) {
    let f = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("vbdev: invalid --log filter {filter:?} ({e}); using warn");
        EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
