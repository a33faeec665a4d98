//! The exit status of every command, one per kind of failure, so that a script can tell
//! "nothing listens there" from "the server said no" from "it may have run" without
//! reading the text. `send --help` and the README list the same table.

use std::process::ExitCode;

use courier::client::{ClientError, Outcome};
use courier::wire::ErrorCode;

/// Everything worked.
pub(crate) const OK: u8 = 0;
/// Anything not listed below (a file that cannot be read, a configuration `serve`
/// refuses, a reply `bench` found wrong, a request not received: safe to send again).
pub(crate) const FAILURE: u8 = 1;
/// The command line (or a COURIER_* variable standing for a flag) is wrong.
pub(crate) const USAGE: u8 = 2;
/// A request was sent and the connection ended before its answer: it may have run.
pub(crate) const OUTCOME_UNKNOWN: u8 = 3;
/// No reply within --timeout: the request may have run, or may still. The server's ERROR
/// 20 (deadline exceeded) is the same event seen from the other side: the deadline that
/// `--timeout` sent with the request passed there first, and its work was dropped.
pub(crate) const CALL_TIMEOUT: u8 = 4;
/// The server answered with an ERROR.
pub(crate) const SERVER_ERROR: u8 = 5;
/// Nothing listens at the address, or the connection could not be made.
pub(crate) const REFUSED: u8 = 6;
/// The TCP connect did not finish within --connect-timeout.
pub(crate) const CONNECT_TIMEOUT: u8 = 7;
/// Connected, but the peer does not speak courier (or speaks another version).
pub(crate) const NOT_COURIER: u8 = 8;
/// The TLS handshake failed, or a TLS port was reached without TLS.
pub(crate) const TLS: u8 = 9;

/// The table as `send --help` shows it.
pub(crate) const TABLE: &str = "Exit status: 0 every reply arrived; 1 any other failure (a request not received: safe to send again); 2 usage (a bad flag or COURIER_* variable); 3 outcome unknown (sent, then the connection ended: it may have run); 4 call timeout (no reply within --timeout, or the server's ERROR 20 at that deadline: it may have run); 5 the server answered with an ERROR; 6 connection refused or impossible; 7 connect timeout; 8 the peer does not speak courier; 9 TLS failed (or a TLS port reached without TLS).";

/// A mistake on the command line found after clap parsed it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub(crate) String);

/// A failure that already knows its exit status (a stream of requests some of which
/// failed: the first failure decides).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failed {
    /// The exit status.
    pub(crate) code: u8,
    /// What to print.
    pub(crate) message: String,
}

/// The status for one client error.
pub(crate) fn client_code(err: &ClientError) -> u8 {
    match err {
        ClientError::Refused { .. } | ClientError::Connect { .. } => REFUSED,
        ClientError::ConnectTimeout { .. } => CONNECT_TIMEOUT,
        ClientError::Timeout { .. } => CALL_TIMEOUT,
        // Which of the two timers fires first is a race the caller cannot control.
        ClientError::Server {
            code: ErrorCode::DeadlineExceeded,
            ..
        } => CALL_TIMEOUT,
        ClientError::Server { .. } => SERVER_ERROR,
        ClientError::NotCourier { .. } | ClientError::NoHello | ClientError::Protocol(_) => {
            NOT_COURIER
        }
        ClientError::Tls { .. } => TLS,
        other if other.outcome() == Outcome::Unknown => OUTCOME_UNKNOWN,
        _ => FAILURE,
    }
}

/// The status for an error a command returned: the first client error in its chain
/// decides, a [`Usage`] error is 2, anything else 1.
pub(crate) fn code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return client_code(client);
        }
        if cause.downcast_ref::<Usage>().is_some() {
            return USAGE;
        }
        if let Some(failed) = cause.downcast_ref::<Failed>() {
            return failed.code;
        }
    }
    FAILURE
}

/// An error a command returned, as the process's exit status.
pub(crate) fn exit_code(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(code(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_s_deadline_error_is_a_call_timeout_and_other_errors_are_not() {
        let server = |code| ClientError::Server {
            code,
            message: "x".into(),
        };
        assert_eq!(
            client_code(&server(ErrorCode::DeadlineExceeded)),
            CALL_TIMEOUT
        );
        assert_eq!(client_code(&server(ErrorCode::HandlerFailed)), SERVER_ERROR);
        assert_eq!(client_code(&server(ErrorCode::Busy)), SERVER_ERROR);
    }
}
