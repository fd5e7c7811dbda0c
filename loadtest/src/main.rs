//! `flowhub-loadtest`: see the crate documentation and `docs/PERFORMANCE.md`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use flowhub_loadtest::cli::Cli;
use flowhub_loadtest::{logging, Verdict};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    match run(cli) {
        Ok(Verdict::Pass) => ExitCode::SUCCESS,
        Ok(Verdict::Fail) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Verdict> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let verdict = runtime.block_on(flowhub_loadtest::execute(&cli.command))?;
    // Sessions still closing must not hold the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(verdict)
}
