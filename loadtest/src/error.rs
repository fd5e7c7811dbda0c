//! [`Error`]: why a load-test run could not produce a report.
//!
//! A run that completes but finds a problem (a convergence FAIL, missing deliveries)
//! is not an error: it is a report with failed checks.

use std::fmt;

/// Why a run failed before it could report.
#[derive(Debug)]
pub enum Error {
    /// Bad command-line input or parameters.
    Usage(String),
    /// The hub does not offer something the scenario needs (e.g. run ingest).
    Unsupported(String),
    /// Connecting to or talking with a hub failed during setup.
    Hub(String),
    /// A file or socket operation failed.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// Rendering the JSON or HTML report failed.
    Report(String),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn hub(msg: impl Into<String>) -> Self {
        Error::Hub(msg.into())
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "invalid parameters: {m}"),
            Error::Unsupported(m) => write!(f, "not supported by the hub: {m}"),
            Error::Hub(m) => write!(f, "hub: {m}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Report(m) => write!(f, "report: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result alias of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;
