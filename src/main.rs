//! The `courier` command line: `serve` runs a server, `send` calls one, `bench` measures
//! one, `stats` reads its counters. This file is the composition root: it parses the
//! arguments, sets up logging and the runtime, runs the subcommand and turns its result
//! into the exit status. Each subcommand lives in `cli/`, and calls into the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use courier::client::{ClientError, Outcome};

use cli::logging::{flush_logs, say};
use cli::{Cli, Command, RuntimeKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::logging::init(cli.log_format);
    let runtime = match runtime(cli.runtime) {
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
        }
    });
    // Ends the tasks still running (and what they hold) before the last logs are flushed.
    drop(runtime);
    flush_logs();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            say(format_args!("courier: {err:#}"));
            exit_code(&err)
        }
    }
}

/// The Tokio runtime `--runtime` asks for.
fn runtime(kind: RuntimeKind) -> std::io::Result<tokio::runtime::Runtime> {
    match kind {
        RuntimeKind::Multi => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        RuntimeKind::Current => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
}

/// The exit status for an error: 3 when a request's outcome is unknown, 1 otherwise.
fn exit_code(err: &anyhow::Error) -> ExitCode {
    let unknown = err
        .chain()
        .filter_map(|cause| cause.downcast_ref::<ClientError>())
        .any(|err| err.outcome() == Outcome::Unknown);
    if unknown {
        ExitCode::from(OUTCOME_UNKNOWN)
    } else {
        ExitCode::FAILURE
    }
}

/// The exit status of a command that sent a request whose outcome is unknown.
const OUTCOME_UNKNOWN: u8 = 3;
