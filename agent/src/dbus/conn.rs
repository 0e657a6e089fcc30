//! A blocking D-Bus connection on a std `UnixStream`.
//!
//! Contract:
//! * [`bus_address`]: `DBUS_SYSTEM_BUS_ADDRESS`, else
//!   `unix:path=/run/dbus/system_bus_socket`; [`parse_address`] (pure) takes
//!   the first usable `unix:path=…` or `unix:abstract=…` of a `;`-list
//!   (`%xx` escapes decoded; other transports skipped).
//! * [`Conn::connect`]: SASL EXTERNAL ([`super::auth`]) asking for unix fd
//!   passing, then `Hello`; everything bounded by the timeout given.
//! * [`Conn::call`] sends a METHOD_CALL and waits (≤ the timeout, which
//!   [`Conn::set_timeout`] may change later) for the
//!   METHOD_RETURN or ERROR whose reply serial matches; an ERROR is
//!   [`DbusError::Remote`]. Signals read meanwhile are queued for
//!   [`Conn::next_signal`] when [`Conn::keep_signals`] was asked for, at most
//!   [`MAX_QUEUED_SIGNALS`]: more are dropped, counted
//!   ([`Conn::dropped_signals`]) and logged once. Other messages (stale
//!   replies, calls to us) are dropped.
//! * Fds (SCM_RIGHTS) are received with `MSG_CMSG_CLOEXEC`, wrapped in
//!   `OwnedFd` at once, at most [`MAX_FDS`] per message; those a message
//!   does not claim are closed. The only `unsafe` is in [`recv`].
//! * A [`DbusError::Timeout`] leaves the connection usable (a late reply is
//!   dropped as stale); after any other error but `Remote` it is broken and
//!   must be dropped (the byte stream cannot be resynchronised).

// Real time: a blocking connection's call timeouts bound socket reads on a
// std thread.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::auth::{self, Auth, AuthError};
use super::wire::{self, Kind, Message, Value, WireError};

pub const DEFAULT_SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
/// At most this many signals wait for [`Conn::next_signal`].
pub const MAX_QUEUED_SIGNALS: usize = 32;
/// At most this many fds with one message (logind's `Inhibit` sends one).
pub const MAX_FDS: usize = 8;

pub const DBUS: &str = "org.freedesktop.DBus";
pub const DBUS_PATH: &str = "/org/freedesktop/DBus";
pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    #[error("no usable unix: D-Bus address in {0:?}")]
    Address(String),
    #[error("D-Bus socket: {0}")]
    Io(#[from] io::Error),
    #[error("D-Bus authentication: {0}")]
    Auth(#[from] AuthError),
    #[error("malformed D-Bus message: {0}")]
    Malformed(String),
    #[error("{name}: {message}")]
    Remote { name: String, message: String },
    #[error("no answer on the D-Bus within {0:?}")]
    Timeout(Duration),
    #[error("the D-Bus does not pass unix fds to this connection")]
    NoFdPassing,
    #[error("the D-Bus closed the connection")]
    Closed,
    #[error("unexpected D-Bus reply: {0}")]
    Reply(&'static str),
}

impl From<WireError> for DbusError {
    fn from(e: WireError) -> Self {
        DbusError::Malformed(e.to_string())
    }
}

impl DbusError {
    /// The name is not on the bus (and not activatable).
    pub fn is_absent(&self) -> bool {
        matches!(self, DbusError::Remote { name, .. } if name == "org.freedesktop.DBus.Error.ServiceUnknown"
            || name == "org.freedesktop.DBus.Error.NameHasNoOwner")
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAddr {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// The system bus's address (`DBUS_SYSTEM_BUS_ADDRESS` honoured).
pub fn bus_address() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| DEFAULT_SYSTEM_BUS.to_owned())
}

/// The first usable `unix:` address of a `;`-separated list.
pub fn parse_address(s: &str) -> Result<BusAddr, DbusError> {
    'list: for part in s.split(';') {
        let Some(rest) = part.trim().strip_prefix("unix:") else {
            continue;
        };
        let (mut path, mut abs) = (None, None);
        for kv in rest.split(',') {
            let Some((k, v)) = kv.split_once('=') else {
                continue 'list;
            };
            let Some(v) = unescape(v) else {
                continue 'list;
            };
            match k {
                "path" => path = Some(v),
                "abstract" => abs = Some(v),
                _ => {}
            }
        }
        match (path, abs) {
            (Some(p), None) if !p.is_empty() => {
                use std::os::unix::ffi::OsStringExt;
                return Ok(BusAddr::Path(std::ffi::OsString::from_vec(p).into()));
            }
            (None, Some(a)) if !a.is_empty() => return Ok(BusAddr::Abstract(a)),
            _ => continue,
        }
    }
    Err(DbusError::Address(s.chars().take(200).collect()))
}

/// `%xx` escapes decoded; `None` if one is broken.
fn unescape(v: &str) -> Option<Vec<u8>> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A connection to a bus.
pub struct Conn {
    sock: UnixStream,
    /// Bytes read and not yet a whole message (≤ one message + one read).
    rbuf: Vec<u8>,
    /// Fds received and not yet claimed by a message.
    fds: VecDeque<OwnedFd>,
    serial: u32,
    unique_name: String,
    unix_fd: bool,
    timeout: Duration,
    keep_signals: bool,
    signals: VecDeque<Message>,
    dropped_signals: u64,
}

impl Conn {
    /// Connects, authenticates and says `Hello`, within `timeout`; each call
    /// later waits at most `timeout` too.
    pub fn connect(address: &str, timeout: Duration) -> Result<Conn, DbusError> {
        let sock = match parse_address(address)? {
            BusAddr::Path(p) => UnixStream::connect(p)?,
            BusAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                UnixStream::connect_addr(&a)?
            }
        };
        sock.set_write_timeout(Some(timeout))?;
        let mut c = Conn {
            sock,
            rbuf: Vec::new(),
            fds: VecDeque::new(),
            serial: 0,
            unique_name: String::new(),
            unix_fd: false,
            timeout,
            keep_signals: false,
            signals: VecDeque::new(),
            dropped_signals: 0,
        };
        c.authenticate(Instant::now() + timeout)?;
        let r = c.call(DBUS, DBUS_PATH, DBUS, "Hello", vec![])?;
        c.unique_name = r
            .first()
            .and_then(Value::as_str)
            .ok_or(DbusError::Reply("Hello without a name"))?
            .to_owned();
        Ok(c)
    }

    /// The system bus ([`bus_address`]).
    pub fn system(timeout: Duration) -> Result<Conn, DbusError> {
        Conn::connect(&bus_address(), timeout)
    }

    fn authenticate(&mut self, deadline: Instant) -> Result<(), DbusError> {
        let uid = {
            use std::os::unix::fs::MetadataExt;
            // /proc/self belongs to the process's effective uid: the one the
            // bus reads from the socket (SO_PEERCRED).
            std::fs::metadata("/proc/self")?.uid()
        };
        let (mut a, first) = Auth::new(uid, true);
        (&self.sock).write_all(&first)?;
        loop {
            while let Some(line) = auth::take_line(&mut self.rbuf)? {
                let (send, done) = a.on_line(&line)?;
                (&self.sock).write_all(&send)?;
                if let Some(d) = done {
                    self.unix_fd = d.unix_fd;
                    return Ok(());
                }
            }
            self.fill(deadline)?;
        }
    }

    /// Our unique name (`:1.42`).
    pub fn unique_name(&self) -> &str {
        &self.unique_name
    }

    /// Whether the bus agreed to pass unix fds.
    pub fn unix_fd(&self) -> bool {
        self.unix_fd
    }

    /// Bounds each later call (and write) by `timeout` instead of the one
    /// given at connect: e.g. what is left of a caller's deadline.
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.timeout = timeout;
        self.sock.set_write_timeout(Some(timeout))
    }

    /// Keep signals for [`Conn::next_signal`] (off: they are dropped).
    pub fn keep_signals(&mut self, on: bool) {
        self.keep_signals = on;
    }

    /// Signals dropped because the queue was full.
    pub fn dropped_signals(&self) -> u64 {
        self.dropped_signals
    }

    /// Another handle on the socket: `shutdown(Both)` on it ends a blocked
    /// [`Conn::next_signal`] at once (with [`DbusError::Closed`]).
    pub fn shutdown_handle(&self) -> io::Result<UnixStream> {
        self.sock.try_clone()
    }

    /// A method call's reply body.
    pub fn call(
        &mut self,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, DbusError> {
        self.call_fds(dest, path, iface, member, args)
            .map(|(b, _)| b)
    }

    /// A method call's reply body and the fds that came with it.
    pub fn call_fds(
        &mut self,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        args: Vec<Value>,
    ) -> Result<(Vec<Value>, Vec<OwnedFd>), DbusError> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let serial = self.serial;
        let bytes = wire::encode(&Message::call(serial, dest, path, iface, member, args))?;
        (&self.sock).write_all(&bytes).map_err(|e| self.io(e))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let (m, fds) = self.read_message(deadline)?;
            match m.kind {
                Kind::MethodReturn if m.reply_serial == Some(serial) => return Ok((m.body, fds)),
                Kind::Error if m.reply_serial == Some(serial) => {
                    return Err(DbusError::Remote {
                        name: m.error_name.unwrap_or_default().chars().take(128).collect(),
                        message: m
                            .body
                            .first()
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .chars()
                            .take(256)
                            .collect(),
                    });
                }
                Kind::Signal => self.queue(m),
                _ => {}
            }
        }
    }

    /// `Properties.Get(iface, name)`'s value (out of its variant).
    pub fn get_property(
        &mut self,
        dest: &str,
        path: &str,
        iface: &str,
        name: &str,
    ) -> Result<Value, DbusError> {
        let mut r = self.call(
            dest,
            path,
            PROPERTIES,
            "Get",
            vec![Value::str(iface), Value::str(name)],
        )?;
        match r.pop() {
            Some(Value::Variant(v)) if r.is_empty() => Ok(*v),
            _ => Err(DbusError::Reply(
                "Properties.Get did not return one variant",
            )),
        }
    }

    /// `NameHasOwner(name)`.
    pub fn name_has_owner(&mut self, name: &str) -> Result<bool, DbusError> {
        match self
            .call(
                DBUS,
                DBUS_PATH,
                DBUS,
                "NameHasOwner",
                vec![Value::str(name)],
            )?
            .as_slice()
        {
            [Value::Bool(b)] => Ok(*b),
            _ => Err(DbusError::Reply("NameHasOwner did not return a boolean")),
        }
    }

    fn queue(&mut self, m: Message) {
        if !self.keep_signals {
            return;
        }
        if self.signals.len() >= MAX_QUEUED_SIGNALS {
            self.dropped_signals += 1;
            if self.dropped_signals == 1 {
                tracing::warn!(
                    cap = MAX_QUEUED_SIGNALS,
                    member = m.member.as_deref().unwrap_or(""),
                    "D-Bus signal queue full: signal dropped (counted; further drops are not logged)."
                );
            }
            return;
        }
        self.signals.push_back(m);
    }

    /// The next signal, waiting at most `timeout`; `Ok(None)` if none came.
    pub fn next_signal(&mut self, timeout: Duration) -> Result<Option<Message>, DbusError> {
        if let Some(m) = self.signals.pop_front() {
            return Ok(Some(m));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_message(deadline) {
                Ok((m, _fds)) if m.kind == Kind::Signal => return Ok(Some(m)),
                Ok(_) => {}
                Err(DbusError::Timeout(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn io(&self, e: io::Error) -> DbusError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => DbusError::Timeout(self.timeout),
            _ => DbusError::Io(e),
        }
    }

    /// One whole message and its fds.
    fn read_message(&mut self, deadline: Instant) -> Result<(Message, Vec<OwnedFd>), DbusError> {
        loop {
            if let Some(total) = wire::frame_len(&self.rbuf)?
                && self.rbuf.len() >= total
            {
                let m = wire::decode(&self.rbuf[..total]);
                self.rbuf.drain(..total);
                let m = m?;
                let n = m.unix_fds as usize;
                if n > MAX_FDS || n > self.fds.len() {
                    return Err(DbusError::Malformed(format!(
                        "{n} unix fds claimed, {} received (at most {MAX_FDS})",
                        self.fds.len()
                    )));
                }
                let fds = self.fds.drain(..n).collect();
                if self.rbuf.is_empty() {
                    // No message begun after this one: stray fds are closed.
                    self.fds.clear();
                }
                return Ok((m, fds));
            }
            self.fill(deadline)?;
        }
    }

    /// Reads what is there (≤ 4 KiB), waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), DbusError> {
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DbusError::Timeout(self.timeout));
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut fds = Vec::new();
            match recv(&self.sock, &mut buf, &mut fds) {
                Ok((0, _)) => return Err(DbusError::Closed),
                Ok((n, truncated)) => {
                    self.fds.extend(fds);
                    if truncated || self.fds.len() > MAX_FDS {
                        return Err(DbusError::Malformed(format!(
                            "more than {MAX_FDS} unix fds at once"
                        )));
                    }
                    self.rbuf.extend_from_slice(&buf[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }
}

/// `recvmsg(2)` into `buf`, with the fds that came along (SCM_RIGHTS,
/// close-on-exec) pushed to `fds` as `OwnedFd`s; also whether the kernel
/// had more fds than room (`MSG_CTRUNC`: those it closed itself).
fn recv(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<(usize, bool)> {
    // Room for MAX_FDS fds (CMSG_SPACE(8 × 4) = 48 bytes), u64-aligned as
    // cmsghdr needs.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msg` points at `iov` (our live, writable `buf`, its exact
    // length) and at `control` (its exact size); both outlive the call.
    // recvmsg writes at most those lengths. The CMSG_* walk stays within
    // `msg_controllen` as the kernel set it (the macros check it), each
    // SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4` fds that the
    // kernel has just installed in this process, owned by nobody else: each
    // is wrapped in an OwnedFd at once (read unaligned: the payload's
    // alignment is not guaranteed for c_int).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((n as usize, msg.msg_flags & libc::MSG_CTRUNC != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let p = |s: &str| BusAddr::Path(PathBuf::from(s));
        let cases: &[(&str, Option<BusAddr>)] = &[
            (
                "unix:path=/run/dbus/system_bus_socket",
                Some(p("/run/dbus/system_bus_socket")),
            ),
            ("unix:path=/tmp/x%20y,guid=0123", Some(p("/tmp/x y"))),
            (
                "unix:abstract=/tmp/dbus-XYZ,guid=1",
                Some(BusAddr::Abstract(b"/tmp/dbus-XYZ".to_vec())),
            ),
            ("tcp:host=localhost,port=1;unix:path=/b", Some(p("/b"))),
            ("unix:path=/a%zz;unix:path=/b", Some(p("/b"))),
            ("unix:runtime=yes;unix:path=/c", Some(p("/c"))),
            ("unix:path=/a,abstract=b", None),
            ("unix:path=", None),
            ("tcp:host=x", None),
            ("", None),
            ("unix:path=/a%2", None),
        ];
        for (s, want) in cases {
            match (parse_address(s), want) {
                (Ok(a), Some(w)) => assert_eq!(&a, w, "{s}"),
                (Err(DbusError::Address(_)), None) => {}
                (got, _) => panic!("{s}: {got:?}"),
            }
        }
    }
}
