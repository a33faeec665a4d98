//! The `courier` command line: `serve` runs a server, `send` calls one, `bench` measures
//! one, `stats` reads its counters. This file is the composition root: it parses the
//! arguments, sets up logging and the runtime, runs the subcommand and turns its result
//! into the exit status. Each subcommand lives in `cli/`, and calls into the library.

mod cli;

use std::process::ExitCode;

use cli::logging::{flush_logs, say};
use cli::{Command, RuntimeKind};

fn main() -> ExitCode {
    let cli = cli::env::parse();
    cli::logging::init(cli.log_format);
    let server = matches!(cli.command, Command::Serve(_) | Command::Route(_));
    let runtime = match runtime(cli.runtime, server) {
        Ok(runtime) => runtime,
        Err(err) => {
            say(format_args!("courier: cannot start the runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => cli::serve::run(*args).await,
            Command::Route(args) => cli::route::run(*args).await,
            Command::Send(args) => cli::send::run(args).await,
            Command::Bench(args) => cli::bench::run(args).await,
            Command::Stats(args) => cli::stats::run(args).await,
            Command::Completions(args) => cli::manual::completions(&args),
            Command::Man => cli::manual::man(),
        }
    });
    // Ends the tasks still running (and what they hold) before the last logs are flushed.
    drop(runtime);
    flush_logs();
    match result {
        Ok(()) => ExitCode::from(cli::exit::OK),
        Err(err) => {
            say(format_args!("courier: {err:#}"));
            cli::exit::exit_code(&err)
        }
    }
}

/// The Tokio runtime `--runtime` asks for, for a server (`serve`, `route`) or not.
fn runtime(kind: RuntimeKind, server: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().ok().map(usize::from);
    if kind.one_thread(cpus, server) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
}
