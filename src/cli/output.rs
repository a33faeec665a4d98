//! How `courier send` prints a reply (`--output`), shared by one message and a stream.

use std::io::Write;

use base64::Engine as _;
use clap::ValueEnum;

/// How `courier send` prints a reply (`--output`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Output {
    /// Lowercase hex, one line per reply.
    Hex,
    /// The bytes as they are, nothing added.
    Raw,
    /// The bytes as UTF-8 text (invalid sequences replaced), one line per reply.
    Text,
    /// Base64 (standard alphabet, padded), one line per reply.
    Base64,
}

impl Output {
    /// Writes one reply in this form.
    pub(crate) fn write(self, out: &mut impl Write, reply: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Hex => writeln!(out, "{}", hex::encode(reply)),
            Output::Raw => out.write_all(reply),
            Output::Text => {
                out.write_all(String::from_utf8_lossy(reply).as_bytes())?;
                if reply.ends_with(b"\n") {
                    Ok(())
                } else {
                    out.write_all(b"\n")
                }
            }
            Output::Base64 => writeln!(
                out,
                "{}",
                base64::engine::general_purpose::STANDARD.encode(reply)
            ),
        }
    }
}
