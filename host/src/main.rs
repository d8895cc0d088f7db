//! The `fnhost` binary: parse arguments, start tracing, hand off to [`fnhost::cli`].

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's allocator: every invocation builds and drops
/// a store, WASI context and message copies on the async threads while the
/// queue writer allocates beside them, and glibc's arenas spent a fifth of
/// the workers' CPU there (`malloc_consolidate`, `_int_free`). Measured in
/// `BENCHMARKS.md` (queue bench, interleaved runs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = fnhost::cli::Cli::parse();
    if cli.keeps_host_data() {
        // What the host makes is its user's alone: files 0600, directories
        // 0700 (databases, blobs, components, keys, sockets), in this
        // process and the ones it starts.
        // SAFETY: umask(2) sets this process's file mode mask and cannot
        // fail; no other thread has started and no file is made yet.
        unsafe { libc::umask(0o077) };
    }
    let default = if cli.is_serve() { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FNHOST_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The async runtime is started by `main`, after what must precede
    // every thread (the trusted tier's confinement).
    match cli.main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
