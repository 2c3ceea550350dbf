//! The tracing subscriber: stderr, EnvFilter syntax from `--log`, colours only on a
//! terminal and without `NO_COLOR`.

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
        // Colours on a terminal, unless NO_COLOR is set (no-color.org).
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}
