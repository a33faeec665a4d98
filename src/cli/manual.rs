//! `courier completions SHELL` and `courier man`: the shell completion script and the
//! man page, generated from the same clap definitions as `--help`, so that they cannot
//! drift from it. The README gives the commands that install them.

use std::io::Write;

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// `courier completions`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Writes the completion script for `args.shell` to stdout.
pub(crate) fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "courier", &mut out);
    write_out(&out)
}

/// Writes the man page (roff): courier(1) with every subcommand's flags, each as its own
/// section.
pub(crate) fn man() -> anyhow::Result<()> {
    let command = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut out)
        .context("cannot render the man page")?;
    for sub in command.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let name = format!("courier {}", sub.get_name());
        let man = clap_mangen::Man::new(sub.clone().bin_name(name.clone()));
        // Each subcommand's description and options, as a section of this page.
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        man.render_description_section(&mut out)
            .and_then(|()| man.render_options_section(&mut out))
            .context("cannot render the man page")?;
    }
    write_out(&out)
}

/// Writes `bytes` to stdout.
fn write_out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}
