//! The SASL exchange before D-Bus messages, client side, pure.
//!
//! Contract: the client sends `\0AUTH EXTERNAL <hex(uid)>\r\n` (the uid as
//! ASCII decimal, hex-encoded: the kernel's peer credentials prove it);
//! `OK <guid>` → `NEGOTIATE_UNIX_FD` (when asked for) → `AGREE_UNIX_FD`
//! (fds may travel) or `ERROR` (they may not: a call returning one then
//! fails clearly) → `BEGIN`, and messages follow. `REJECTED`, `ERROR` to the
//! AUTH, anything else, or a line longer than [`MAX_LINE`] is an error.

/// The longest server line accepted (a guid line is ~35 bytes; `REJECTED`
/// lists a few mechanisms).
pub const MAX_LINE: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the bus rejected EXTERNAL authentication (it offers: {0})")]
    Rejected(String),
    #[error("the bus refused authentication: {0}")]
    Error(String),
    #[error("unexpected line from the bus during authentication: {0:?}")]
    Unexpected(String),
    #[error("a line of more than {MAX_LINE} bytes during authentication")]
    LineTooLong,
}

/// The outcome, once `BEGIN` is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authed {
    pub guid: String,
    pub unix_fd: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    WaitOk,
    WaitAgree,
    Done,
}

#[derive(Debug)]
pub struct Auth {
    state: State,
    want_fd: bool,
    guid: String,
}

/// What to send next and, once done, the outcome.
pub type Step = (Vec<u8>, Option<Authed>);

impl Auth {
    /// The client and the bytes it opens with.
    pub fn new(uid: u32, want_fd: bool) -> (Auth, Vec<u8>) {
        let hex: String = uid
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        let a = Auth {
            state: State::WaitOk,
            want_fd,
            guid: String::new(),
        };
        (a, format!("\0AUTH EXTERNAL {hex}\r\n").into_bytes())
    }

    /// One line from the server (without its `\r\n`).
    pub fn on_line(&mut self, line: &[u8]) -> Result<Step, AuthError> {
        let text = String::from_utf8_lossy(line)
            .chars()
            .take(128)
            .collect::<String>();
        let (cmd, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        match (self.state, cmd) {
            (State::WaitOk, "OK") => {
                let guid = rest.trim();
                if guid.len() != 32 || !guid.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(AuthError::Unexpected(text.clone()));
                }
                self.guid = guid.to_owned();
                if self.want_fd {
                    self.state = State::WaitAgree;
                    Ok((b"NEGOTIATE_UNIX_FD\r\n".to_vec(), None))
                } else {
                    Ok(self.begin(false))
                }
            }
            (State::WaitOk, "REJECTED") => Err(AuthError::Rejected(rest.trim().to_owned())),
            (State::WaitOk, "ERROR") => Err(AuthError::Error(rest.trim().to_owned())),
            (State::WaitAgree, "AGREE_UNIX_FD") if rest.is_empty() => Ok(self.begin(true)),
            (State::WaitAgree, "ERROR") => Ok(self.begin(false)),
            _ => Err(AuthError::Unexpected(text)),
        }
    }

    fn begin(&mut self, unix_fd: bool) -> Step {
        self.state = State::Done;
        (
            b"BEGIN\r\n".to_vec(),
            Some(Authed {
                guid: std::mem::take(&mut self.guid),
                unix_fd,
            }),
        )
    }
}

/// Takes one `\r\n`-terminated line off the front of `buf` (without the
/// terminator); `Ok(None)` while incomplete; an error once `buf` holds more
/// than [`MAX_LINE`] bytes without one.
pub fn take_line(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, AuthError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) if i <= MAX_LINE => {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            Ok(Some(line))
        }
        Some(_) => Err(AuthError::LineTooLong),
        None if buf.len() > MAX_LINE => Err(AuthError::LineTooLong),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn opening() {
        let (_, first) = Auth::new(1000, true);
        assert_eq!(first, b"\0AUTH EXTERNAL 31303030\r\n");
        let (_, first) = Auth::new(0, false);
        assert_eq!(first, b"\0AUTH EXTERNAL 30\r\n");
    }

    #[test]
    fn exchanges() {
        type Case = (
            bool,
            &'static [&'static str],
            Result<(Vec<&'static str>, Option<bool>), &'static str>,
        );
        const OK: &str = "OK 0123456789abcdef0123456789abcdef";
        let cases: Vec<Case> = vec![
            (
                true,
                &[OK, "AGREE_UNIX_FD"],
                Ok((vec!["NEGOTIATE_UNIX_FD\r\n", "BEGIN\r\n"], Some(true))),
            ),
            (
                true,
                &[OK, "ERROR not supported"],
                Ok((vec!["NEGOTIATE_UNIX_FD\r\n", "BEGIN\r\n"], Some(false))),
            ),
            (false, &[OK], Ok((vec!["BEGIN\r\n"], Some(false)))),
            (
                true,
                &["REJECTED DBUS_COOKIE_SHA1 ANONYMOUS"],
                Err("rejected"),
            ),
            (true, &["ERROR no"], Err("error")),
            (true, &["DATA"], Err("unexpected")),
            (true, &["OK not-a-guid"], Err("unexpected")),
            (true, &[OK, "OK again"], Err("unexpected")),
            (true, &["\u{1}\u{2}garbage"], Err("unexpected")),
        ];
        for (want_fd, lines, expect) in cases {
            let (mut a, _) = Auth::new(1000, want_fd);
            let mut sent = Vec::new();
            let mut outcome = None;
            let mut err = None;
            for l in lines {
                match a.on_line(l.as_bytes()) {
                    Ok((bytes, done)) => {
                        sent.push(String::from_utf8(bytes).unwrap());
                        if let Some(d) = done {
                            assert_eq!(d.guid, GUID);
                            outcome = Some(d.unix_fd);
                        }
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            match expect {
                Ok((s, o)) => {
                    assert!(err.is_none(), "{lines:?}: {err:?}");
                    assert_eq!(sent, s, "{lines:?}");
                    assert_eq!(outcome, o, "{lines:?}");
                }
                Err(kind) => {
                    let e = err.unwrap_or_else(|| panic!("{lines:?} should fail"));
                    let got = match e {
                        AuthError::Rejected(m) => {
                            assert_eq!(m, "DBUS_COOKIE_SHA1 ANONYMOUS");
                            "rejected"
                        }
                        AuthError::Error(_) => "error",
                        AuthError::Unexpected(_) => "unexpected",
                        AuthError::LineTooLong => "long",
                    };
                    assert_eq!(got, kind, "{lines:?}");
                }
            }
        }
    }

    #[test]
    fn lines_are_bounded() {
        let mut b = b"OK 1\r\nAGREE".to_vec();
        assert_eq!(take_line(&mut b).unwrap(), Some(b"OK 1".to_vec()));
        assert_eq!(take_line(&mut b).unwrap(), None);
        assert_eq!(b, b"AGREE");
        let mut long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(take_line(&mut long), Err(AuthError::LineTooLong));
        let mut long = vec![b'x'; MAX_LINE + 1];
        long.extend_from_slice(b"\r\n");
        assert_eq!(take_line(&mut long), Err(AuthError::LineTooLong));
        let mut exact = vec![b'x'; MAX_LINE];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(take_line(&mut exact).unwrap().unwrap().len(), MAX_LINE);
    }
}
