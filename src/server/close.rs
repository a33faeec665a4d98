//! Why a connection ends: [`Close`] (the counted reason and the text logged), the
//! deadlines that can end it ([`Deadline`]), and [`LogHex`], how payloads appear in the
//! logs that explain it.
//!
//! These are the words the sessions and the driver share. They hold no I/O, so the
//! I/O-free sessions (`session.rs`, `ordered.rs`) can use them as freely as the driver.

use std::fmt;

use crate::config::Config;
use crate::stats::CloseReason;
use crate::wire::{CodecError, ErrorCode};

/// Payload bytes shown in debug logs; longer payloads are cut with a note of their size.
const LOG_PAYLOAD_BYTES: usize = 256;

/// Why a connection ended without an I/O error: the counted reason and, for limits and
/// faults, the text that was logged (and usually sent to the peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    /// The reason it is counted and logged under.
    pub(crate) reason: CloseReason,
    /// What happened, for the log line; empty for an ordinary end.
    pub(crate) detail: String,
}

impl Close {
    /// A close for `reason`, explained by `detail`.
    pub(crate) fn new(reason: CloseReason, detail: impl Into<String>) -> Close {
        Close {
            reason,
            detail: detail.into(),
        }
    }

    /// The close a decoding error calls for: an oversize frame, a frame cut short by the
    /// peer's close, or a protocol error.
    pub(crate) fn for_codec(err: &CodecError) -> Close {
        let reason = match err {
            CodecError::FrameTooLarge { .. } | CodecError::MessageTooLarge { .. } => {
                CloseReason::FrameTooLarge
            }
            CodecError::Truncated { .. } => CloseReason::Truncated,
            CodecError::Io(_) => CloseReason::IoError,
            CodecError::BadLength { .. } | CodecError::UnknownKind { .. } => CloseReason::Protocol,
        };
        Close::new(reason, err.to_string())
    }

    /// The close of a connection whose peer does not read its output: more than
    /// `max_pending_output` bytes wait for it.
    pub(crate) fn slow_reader(pending: usize, config: &Config) -> Close {
        Close::new(
            CloseReason::SlowReader,
            format!(
                "slow reader: {pending} bytes of output unread, more than max_pending_output ({})",
                config.max_pending_output
            ),
        )
    }
}

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// No HELLO within `handshake_timeout`.
    Handshake,
    /// A frame started but not finished within `frame_timeout`.
    Frame,
    /// Nothing happened for `idle_timeout`.
    Idle,
}

impl Deadline {
    /// The reason the close is counted under.
    pub(crate) fn reason(self) -> CloseReason {
        match self {
            Deadline::Handshake => CloseReason::HandshakeTimeout,
            Deadline::Frame => CloseReason::FrameTimeout,
            Deadline::Idle => CloseReason::IdleTimeout,
        }
    }

    /// The ERROR code and the text that tell a peer which deadline closed its connection.
    pub(crate) fn describe(self, config: &Config) -> (ErrorCode, String) {
        let (code, what, setting, limit) = match self {
            Deadline::Handshake => (
                ErrorCode::HandshakeTimeout,
                "handshake timeout: no HELLO within",
                "handshake_timeout",
                config.handshake_timeout,
            ),
            Deadline::Frame => (
                ErrorCode::FrameTimeout,
                "frame timeout: a frame was started but not finished within",
                "frame_timeout",
                config.frame_timeout,
            ),
            Deadline::Idle => (
                ErrorCode::IdleTimeout,
                "idle timeout: nothing received or sent for",
                "idle_timeout",
                config.idle_timeout,
            ),
        };
        let limit = humantime::format_duration(limit);
        (code, format!("{what} {limit} ({setting})"))
    }
}

/// Formats a payload as lowercase hex for debug logs, cut at `LOG_PAYLOAD_BYTES`.
pub(crate) struct LogHex<'a>(pub(crate) &'a [u8]);

impl fmt::Display for LogHex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(LOG_PAYLOAD_BYTES)];
        for byte in shown {
            write!(f, "{byte:02x}")?;
        }
        if shown.len() < self.0.len() {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_payload_is_logged_cut_with_its_size() {
        let payload = vec![0xab; LOG_PAYLOAD_BYTES + 1];
        let shown = LogHex(&payload).to_string();
        assert!(shown.starts_with("abab"), "{shown}");
        assert!(
            shown.ends_with(&format!("... ({} bytes)", payload.len())),
            "{shown}"
        );
        assert_eq!(LogHex(&[0x01, 0xff]).to_string(), "01ff");
    }

    #[test]
    fn each_decoding_error_is_counted_under_its_own_reason() {
        let cases = [
            (
                CodecError::FrameTooLarge { len: 9, max: 8 },
                CloseReason::FrameTooLarge,
            ),
            (
                CodecError::MessageTooLarge { len: 9, max: 8 },
                CloseReason::FrameTooLarge,
            ),
            (
                CodecError::Truncated { buffered: 3 },
                CloseReason::Truncated,
            ),
            (CodecError::BadLength { len: 2 }, CloseReason::Protocol),
            (
                CodecError::UnknownKind { kind: 0x7f, id: 1 },
                CloseReason::Protocol,
            ),
        ];
        for (err, reason) in cases {
            let close = Close::for_codec(&err);
            assert_eq!(close.reason, reason, "{err}");
            assert_eq!(close.detail, err.to_string());
        }
    }
}
