//! The `COURIER_*` variables that stand for flags, as a user expects them to behave: an
//! empty variable is the same as an unset one, and a bad value is reported with the
//! variable's name (clap alone would blame the flag, which the user never typed).

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

use super::exit::USAGE;
use super::Cli;

/// Parses the command line, exiting with status 2 and a message naming the flag or the
/// variable at fault when it is wrong.
pub(crate) fn parse() -> Cli {
    let command = Cli::command();
    unset_empty(&command);
    let argv: Vec<OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(err) => match blame_variable(&command, &argv, &err) {
            Some(message) => {
                eprintln!("courier: {message}");
                std::process::exit(i32::from(USAGE));
            }
            None => err.exit(),
        },
    }
}

/// Removes every empty `COURIER_*` variable that a flag reads, so that `COURIER_X=` means
/// "not set" rather than an empty value.
fn unset_empty(command: &clap::Command) {
    for arg in command.get_arguments() {
        if let Some(name) = arg.get_env() {
            if std::env::var_os(name).is_some_and(|value| value.is_empty()) {
                // Still single-threaded: nothing else reads the environment yet.
                std::env::remove_var(name);
            }
        }
    }
    for sub in command.get_subcommands() {
        unset_empty(sub);
    }
}

/// When clap refused a value that came from a variable (its flag is not on the command
/// line), the message naming that variable.
fn blame_variable(command: &clap::Command, argv: &[OsString], err: &clap::Error) -> Option<String> {
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(shown)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = shown.split_whitespace().next()?;
    let long = flag.strip_prefix("--")?;
    let typed = argv.iter().any(|word| {
        word.to_str()
            .is_some_and(|w| w == flag || w.starts_with(&format!("{flag}=")))
    });
    if typed {
        return None;
    }
    let arg = find_arg(command, long)?;
    let name = arg.get_env()?.to_str()?.to_owned();
    let value = std::env::var_os(&name)?;
    let why = std::error::Error::source(err)
        .map(ToString::to_string)
        .or_else(|| {
            err.get(ContextKind::ValidValue)
                .map(|valid| format!("expected one of {valid}"))
        })
        .unwrap_or_else(|| "not a valid value".to_owned());
    Some(format!(
        "invalid value {value:?} in the environment variable {name} (which sets {flag}): {why}"
    ))
}

/// The argument with this long name, in any subcommand.
fn find_arg<'a>(command: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_arg(sub, long))
        })
}
