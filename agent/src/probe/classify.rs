//! Failure classification: every probe failure gets an [`ErrorClass`], never
//! just "error". Pure functions of the error, table-tested here and checked
//! against real local servers in the integration tests.

use std::io;

use muster_proto::ErrorClass;

/// A probe failure: its class and a short detail for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    pub detail: String,
}

impl Failure {
    pub fn new(class: ErrorClass, detail: impl Into<String>) -> Self {
        Failure {
            class,
            detail: detail.into(),
        }
    }
}

/// Which step a failure happened in, for the detail text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Dns,
    Connect,
    Tls,
    Request,
    Response,
    Body,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Dns => "resolving the name",
            Step::Connect => "connecting",
            Step::Tls => "the TLS handshake",
            Step::Request => "sending the request",
            Step::Response => "waiting for the response",
            Step::Body => "reading the body",
        }
    }
}

/// Classifies an I/O error that happened during `step`.
pub fn io_class(step: Step, e: &io::Error) -> ErrorClass {
    use io::ErrorKind as K;
    if step == Step::Dns {
        return ErrorClass::Dns;
    }
    if let Some(inner) = e.get_ref()
        && inner.downcast_ref::<rustls::Error>().is_some()
    {
        return ErrorClass::Tls;
    }
    // Whatever ends a handshake early (an alert, a plain-text answer, a close)
    // is a TLS failure to the operator, except running out of time.
    if step == Step::Tls && !matches!(e.kind(), K::TimedOut | K::WouldBlock) {
        return ErrorClass::Tls;
    }
    match e.kind() {
        K::ConnectionRefused => ErrorClass::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ErrorClass::Reset
        }
        K::TimedOut | K::WouldBlock => ErrorClass::Timeout,
        K::PermissionDenied => ErrorClass::Permission,
        K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
            ErrorClass::Unreachable
        }
        K::InvalidData => ErrorClass::Protocol,
        _ => match e.raw_os_error() {
            // EHOSTUNREACH / ENETUNREACH on Linux, WSAEHOSTUNREACH / WSAENETUNREACH on Windows.
            Some(113) | Some(101) | Some(10065) | Some(10051) => ErrorClass::Unreachable,
            _ => ErrorClass::Reset,
        },
    }
}

/// An I/O failure during `step`, classified, with a detail naming the step.
pub fn io_failure(step: Step, e: &io::Error) -> Failure {
    Failure::new(io_class(step, e), format!("{}: {e}", step.name()))
}

/// A hyper error while sending the request or reading the response.
pub fn hyper_failure(step: Step, e: &hyper::Error) -> Failure {
    // Find an underlying io::Error, if any.
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Failure::new(io_class(step, io), format!("{}: {e}", step.name()));
        }
        src = s.source();
    }
    let class = if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        ErrorClass::Reset
    } else if e.is_parse() || e.is_parse_status() {
        ErrorClass::Protocol
    } else if e.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Reset
    };
    Failure::new(class, format!("{}: {e}", step.name()))
}

/// The probe's deadline passed during `step`.
pub fn timeout_failure(step: Step, timeout: std::time::Duration) -> Failure {
    Failure::new(
        ErrorClass::Timeout,
        format!(
            "no answer within {} ({})",
            humantime::format_duration(timeout),
            step.name()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_table() {
        use io::ErrorKind as K;
        let cases: &[(Step, io::Error, ErrorClass)] = &[
            (Step::Dns, io::Error::other("no such host"), ErrorClass::Dns),
            (
                Step::Connect,
                K::ConnectionRefused.into(),
                ErrorClass::Refused,
            ),
            (Step::Response, K::ConnectionReset.into(), ErrorClass::Reset),
            (Step::Response, K::UnexpectedEof.into(), ErrorClass::Reset),
            (Step::Connect, K::TimedOut.into(), ErrorClass::Timeout),
            (
                Step::Connect,
                io::Error::from_raw_os_error(113),
                ErrorClass::Unreachable,
            ),
            (
                Step::Connect,
                io::Error::from_raw_os_error(101),
                ErrorClass::Unreachable,
            ),
            (
                Step::Connect,
                K::PermissionDenied.into(),
                ErrorClass::Permission,
            ),
            (
                Step::Tls,
                io::Error::new(K::InvalidData, rustls::Error::DecryptError),
                ErrorClass::Tls,
            ),
            (
                Step::Response,
                io::Error::new(K::InvalidData, rustls::Error::DecryptError),
                ErrorClass::Tls,
            ),
            (Step::Response, K::InvalidData.into(), ErrorClass::Protocol),
        ];
        for (step, e, want) in cases {
            assert_eq!(io_class(*step, e), *want, "{step:?} {e:?}");
        }
    }
}
