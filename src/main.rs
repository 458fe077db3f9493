//! `custody`: wiring only. Each command lives in `cmd/`.

mod cmd;

/// mimalloc rather than glibc's malloc: a projection's replay allocates and
/// frees a record for every lot it caches, evicts or checkpoints, and
/// spent 14 % of its samples in glibc's malloc and free; with mimalloc
/// it uses about 7 % less CPU an entry (docs/BENCHMARKS.md, "The
/// allocator, measured again").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CUSTODY_LOG").unwrap_or_else(|_| "warn,custody=info,custody_ledger=info".into()))
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal, plain text for a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = cmd::config::parse();
    match cmd::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("custody: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
