//! The D-Bus wire format, pure: values, signatures, whole messages.
//!
//! Contract:
//! * [`encode`] writes little-endian messages (`'l'`), protocol version 1,
//!   with the spec's alignment (the body starts 8-aligned, so offsets are
//!   counted from the body's start); a value that does not match its
//!   declared element type is refused ([`WireError::Mismatch`]), never sent.
//! * [`decode`] reads one whole message, little- *or* big-endian (`'B'` is
//!   legal D-Bus and costs one flag), strictly: total length ≤
//!   [`MAX_MESSAGE`], arrays ≤ 64 MiB (spec) and ≤ the bytes left, nesting
//!   ≤ 32 arrays and ≤ 32 structs (dict entries count as structs) and ≤ 64
//!   containers in all (variants included), strings valid UTF-8 without NUL
//!   and NUL-terminated, object paths and signatures valid, booleans 0 or 1,
//!   padding bytes zero, the body exactly as long as the header says, the
//!   required header fields present. Never panics, whatever the bytes
//!   (proptest below).
//! * [`frame_len`] tells from the 16-byte fixed header how long the whole
//!   message is, so a reader never buffers more than [`MAX_MESSAGE`].

use std::fmt;

/// The largest message the agent reads or writes. The spec allows 128 MiB;
/// the biggest reply the agent asks for is ModemManager's
/// `GetManagedObjects` (a few KiB per modem), logind's signals are a few
/// dozen bytes: 1 MiB leaves two orders of magnitude of headroom while a
/// hostile or broken peer can make the agent buffer at most 1 MiB.
pub const MAX_MESSAGE: usize = 1 << 20;
/// The spec's array limit (also bounded by the bytes left).
pub const MAX_ARRAY: u32 = 1 << 26;
/// Spec: at most 32 nested arrays and 32 nested structs.
pub const MAX_DEPTH: u32 = 32;
/// Spec: at most 64 containers in all (variants included).
pub const MAX_TOTAL_DEPTH: u32 = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated")]
    Truncated,
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte cap")]
    TooLong(usize),
    #[error("bad signature {0:?}")]
    Signature(String),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("value does not match its type {0}")]
    Mismatch(String),
}

/// A D-Bus type, i.e. a parsed single complete signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Byte,
    Bool,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Double,
    Str,
    ObjectPath,
    Signature,
    UnixFd,
    Variant,
    Array(Box<Type>),
    /// `a{kv}`'s entry: only as an array's element.
    Dict(Box<Type>, Box<Type>),
    Struct(Vec<Type>),
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Byte => f.write_str("y"),
            Type::Bool => f.write_str("b"),
            Type::I16 => f.write_str("n"),
            Type::U16 => f.write_str("q"),
            Type::I32 => f.write_str("i"),
            Type::U32 => f.write_str("u"),
            Type::I64 => f.write_str("x"),
            Type::U64 => f.write_str("t"),
            Type::Double => f.write_str("d"),
            Type::Str => f.write_str("s"),
            Type::ObjectPath => f.write_str("o"),
            Type::Signature => f.write_str("g"),
            Type::UnixFd => f.write_str("h"),
            Type::Variant => f.write_str("v"),
            Type::Array(t) => write!(f, "a{t}"),
            Type::Dict(k, v) => write!(f, "{{{k}{v}}}"),
            Type::Struct(ts) => {
                f.write_str("(")?;
                for t in ts {
                    write!(f, "{t}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl Type {
    fn align(&self) -> usize {
        match self {
            Type::Byte | Type::Signature | Type::Variant => 1,
            Type::I16 | Type::U16 => 2,
            Type::Bool | Type::I32 | Type::U32 | Type::Str | Type::ObjectPath | Type::UnixFd => 4,
            Type::Array(_) => 4,
            Type::I64 | Type::U64 | Type::Double | Type::Dict(..) | Type::Struct(_) => 8,
        }
    }

    fn is_basic(&self) -> bool {
        !matches!(
            self,
            Type::Variant | Type::Array(_) | Type::Dict(..) | Type::Struct(_)
        )
    }
}

/// A signature: a sequence of complete types (≤ 255 bytes, nesting within
/// the spec's limits).
pub fn parse_signature(s: &str) -> Result<Vec<Type>, WireError> {
    let bad = || WireError::Signature(s.chars().take(64).collect());
    if s.len() > 255 {
        return Err(bad());
    }
    let b = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        out.push(one_type(b, &mut pos, 0, 0, false).ok_or_else(bad)?);
    }
    Ok(out)
}

/// One complete type from `b[*pos..]`.
fn one_type(b: &[u8], pos: &mut usize, arrays: u32, structs: u32, in_array: bool) -> Option<Type> {
    let c = *b.get(*pos)?;
    *pos += 1;
    Some(match c {
        b'y' => Type::Byte,
        b'b' => Type::Bool,
        b'n' => Type::I16,
        b'q' => Type::U16,
        b'i' => Type::I32,
        b'u' => Type::U32,
        b'x' => Type::I64,
        b't' => Type::U64,
        b'd' => Type::Double,
        b's' => Type::Str,
        b'o' => Type::ObjectPath,
        b'g' => Type::Signature,
        b'h' => Type::UnixFd,
        b'v' => Type::Variant,
        b'a' => {
            if arrays + 1 > MAX_DEPTH {
                return None;
            }
            Type::Array(Box::new(one_type(b, pos, arrays + 1, structs, true)?))
        }
        b'(' => {
            if structs + 1 > MAX_DEPTH {
                return None;
            }
            let mut fields = Vec::new();
            while *b.get(*pos)? != b')' {
                fields.push(one_type(b, pos, arrays, structs + 1, false)?);
            }
            *pos += 1;
            if fields.is_empty() {
                return None;
            }
            Type::Struct(fields)
        }
        b'{' => {
            if !in_array || structs + 1 > MAX_DEPTH {
                return None;
            }
            let k = one_type(b, pos, arrays, structs + 1, false)?;
            if !k.is_basic() {
                return None;
            }
            let v = one_type(b, pos, arrays, structs + 1, false)?;
            if *b.get(*pos)? != b'}' {
                return None;
            }
            *pos += 1;
            Type::Dict(Box::new(k), Box::new(v))
        }
        _ => return None,
    })
}

/// A D-Bus value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    Double(f64),
    Str(String),
    ObjectPath(String),
    Signature(String),
    /// An index into the message's unix fds.
    UnixFd(u32),
    /// Elements of the given type.
    Array(Type, Vec<Value>),
    /// `a{kv}`: key type, value type, entries.
    Dict(Type, Type, Vec<(Value, Value)>),
    Struct(Vec<Value>),
    Variant(Box<Value>),
}

impl Value {
    /// This value's type.
    pub fn type_of(&self) -> Type {
        match self {
            Value::Byte(_) => Type::Byte,
            Value::Bool(_) => Type::Bool,
            Value::I16(_) => Type::I16,
            Value::U16(_) => Type::U16,
            Value::I32(_) => Type::I32,
            Value::U32(_) => Type::U32,
            Value::I64(_) => Type::I64,
            Value::U64(_) => Type::U64,
            Value::Double(_) => Type::Double,
            Value::Str(_) => Type::Str,
            Value::ObjectPath(_) => Type::ObjectPath,
            Value::Signature(_) => Type::Signature,
            Value::UnixFd(_) => Type::UnixFd,
            Value::Array(t, _) => Type::Array(Box::new(t.clone())),
            Value::Dict(k, v, _) => Type::Array(Box::new(Type::Dict(
                Box::new(k.clone()),
                Box::new(v.clone()),
            ))),
            Value::Struct(vs) => Type::Struct(vs.iter().map(Value::type_of).collect()),
            Value::Variant(_) => Type::Variant,
        }
    }

    pub fn str(s: &str) -> Value {
        Value::Str(s.to_owned())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::U32(u) => Some(*u),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    /// A variant's content (one level), else the value itself.
    pub fn unvariant(&self) -> &Value {
        match self {
            Value::Variant(v) => v,
            v => v,
        }
    }

    /// A dict's entries with string-like keys; `None` if not a dict.
    pub fn dict_entries(&self) -> Option<impl Iterator<Item = (&str, &Value)>> {
        match self {
            Value::Dict(_, _, es) => Some(es.iter().filter_map(|(k, v)| Some((k.as_str()?, v)))),
            _ => None,
        }
    }

    /// A dict's value under a string-like key.
    pub fn dict_get(&self, key: &str) -> Option<&Value> {
        self.dict_entries()?
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// The signature of a sequence of values (a body).
pub fn signature_of(vs: &[Value]) -> String {
    vs.iter().map(|v| v.type_of().to_string()).collect()
}

// ------------------------------------------------------------------ messages

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MethodCall = 1,
    MethodReturn = 2,
    Error = 3,
    Signal = 4,
}

/// Header flag: no reply is expected.
pub const NO_REPLY_EXPECTED: u8 = 0x1;

/// A whole message, its header fields and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    pub flags: u8,
    pub serial: u32,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub reply_serial: Option<u32>,
    pub destination: Option<String>,
    pub sender: Option<String>,
    /// How many unix fds travel with the message.
    pub unix_fds: u32,
    pub body: Vec<Value>,
}

impl Message {
    pub fn new(kind: Kind, serial: u32) -> Message {
        Message {
            kind,
            flags: 0,
            serial,
            path: None,
            interface: None,
            member: None,
            error_name: None,
            reply_serial: None,
            destination: None,
            sender: None,
            unix_fds: 0,
            body: Vec::new(),
        }
    }

    /// A method call.
    pub fn call(
        serial: u32,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        body: Vec<Value>,
    ) -> Message {
        Message {
            destination: Some(dest.into()),
            path: Some(path.into()),
            interface: Some(iface.into()),
            member: Some(member.into()),
            body,
            ..Message::new(Kind::MethodCall, serial)
        }
    }
}

/// The whole message's length from its first 16 bytes; `Ok(None)` while
/// fewer are there.
pub fn frame_len(prefix: &[u8]) -> Result<Option<usize>, WireError> {
    if prefix.len() < 16 {
        return Ok(None);
    }
    let big = match prefix[0] {
        b'l' => false,
        b'B' => true,
        _ => return Err(WireError::Invalid("bad endianness byte")),
    };
    let u = |i: usize| {
        let b = [prefix[i], prefix[i + 1], prefix[i + 2], prefix[i + 3]];
        if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let body = u(4) as usize;
    let fields = u(12) as usize;
    let total = 16usize
        .saturating_add(fields)
        .saturating_add(pad_to(16 + fields, 8))
        .saturating_add(body);
    if total > MAX_MESSAGE {
        return Err(WireError::TooLong(total));
    }
    Ok(Some(total))
}

fn pad_to(at: usize, align: usize) -> usize {
    (align - at % align) % align
}

/// A message's bytes.
pub fn encode(m: &Message) -> Result<Vec<u8>, WireError> {
    let sig = signature_of(&m.body);
    parse_signature(&sig)?;
    let mut body = Writer::default();
    for v in &m.body {
        body.value(v, &v.type_of(), 0)?;
    }
    let mut fields = Vec::new();
    let mut field = |code: u8, v: Value| {
        fields.push(Value::Struct(vec![
            Value::Byte(code),
            Value::Variant(Box::new(v)),
        ]))
    };
    if let Some(p) = &m.path {
        field(1, Value::ObjectPath(p.clone()));
    }
    if let Some(s) = &m.interface {
        field(2, Value::Str(s.clone()));
    }
    if let Some(s) = &m.member {
        field(3, Value::Str(s.clone()));
    }
    if let Some(s) = &m.error_name {
        field(4, Value::Str(s.clone()));
    }
    if let Some(u) = m.reply_serial {
        field(5, Value::U32(u));
    }
    if let Some(s) = &m.destination {
        field(6, Value::Str(s.clone()));
    }
    if let Some(s) = &m.sender {
        field(7, Value::Str(s.clone()));
    }
    if !sig.is_empty() {
        field(8, Value::Signature(sig));
    }
    if m.unix_fds > 0 {
        field(9, Value::U32(m.unix_fds));
    }
    let mut h = Writer::default();
    h.buf.extend_from_slice(&[b'l', m.kind as u8, m.flags, 1]);
    h.buf
        .extend_from_slice(&(body.buf.len() as u32).to_le_bytes());
    h.buf.extend_from_slice(&m.serial.to_le_bytes());
    let header_field = Type::Struct(vec![Type::Byte, Type::Variant]);
    h.value(
        &Value::Array(header_field.clone(), fields),
        &Type::Array(Box::new(header_field)),
        0,
    )?;
    h.pad(8);
    h.buf.extend_from_slice(&body.buf);
    if h.buf.len() > MAX_MESSAGE {
        return Err(WireError::TooLong(h.buf.len()));
    }
    Ok(h.buf)
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn pad(&mut self, align: usize) {
        let n = pad_to(self.buf.len(), align);
        self.buf.resize(self.buf.len() + n, 0);
    }

    fn string(&mut self, s: &str) -> Result<(), WireError> {
        if s.contains('\0') {
            return Err(WireError::Invalid("NUL in a string"));
        }
        self.pad(4);
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn value(&mut self, v: &Value, t: &Type, depth: u32) -> Result<(), WireError> {
        if depth > MAX_TOTAL_DEPTH {
            return Err(WireError::Invalid("nested too deep"));
        }
        let mismatch = || WireError::Mismatch(t.to_string());
        self.pad(t.align());
        match (v, t) {
            (Value::Byte(b), Type::Byte) => self.buf.push(*b),
            (Value::Bool(b), Type::Bool) => self.buf.extend_from_slice(&(*b as u32).to_le_bytes()),
            (Value::I16(x), Type::I16) => self.buf.extend_from_slice(&x.to_le_bytes()),
            (Value::U16(x), Type::U16) => self.buf.extend_from_slice(&x.to_le_bytes()),
            (Value::I32(x), Type::I32) => self.buf.extend_from_slice(&x.to_le_bytes()),
            (Value::U32(x), Type::U32) | (Value::UnixFd(x), Type::UnixFd) => {
                self.buf.extend_from_slice(&x.to_le_bytes())
            }
            (Value::I64(x), Type::I64) => self.buf.extend_from_slice(&x.to_le_bytes()),
            (Value::U64(x), Type::U64) => self.buf.extend_from_slice(&x.to_le_bytes()),
            (Value::Double(x), Type::Double) => self.buf.extend_from_slice(&x.to_le_bytes()),
            (Value::Str(s), Type::Str) => self.string(s)?,
            (Value::ObjectPath(s), Type::ObjectPath) => {
                if !valid_path(s) {
                    return Err(WireError::Invalid("bad object path"));
                }
                self.string(s)?
            }
            (Value::Signature(s), Type::Signature) => {
                parse_signature(s)?;
                self.buf.push(s.len() as u8);
                self.buf.extend_from_slice(s.as_bytes());
                self.buf.push(0);
            }
            (Value::Variant(inner), Type::Variant) => {
                let it = inner.type_of();
                let sig = it.to_string();
                if parse_signature(&sig)?.len() != 1 {
                    return Err(mismatch());
                }
                self.buf.push(sig.len() as u8);
                self.buf.extend_from_slice(sig.as_bytes());
                self.buf.push(0);
                self.value(inner, &it, depth + 1)?;
            }
            (Value::Array(et, items), Type::Array(t2))
                if et == &**t2 && !matches!(et, Type::Dict(..)) =>
            {
                let at = self.array_start(et);
                for i in items {
                    self.value(i, et, depth + 1)?;
                }
                self.array_end(at)?;
            }
            (Value::Dict(k, v, es), Type::Array(t2)) => {
                let Type::Dict(k2, v2) = &**t2 else {
                    return Err(mismatch());
                };
                if k != &**k2 || v != &**v2 || !k.is_basic() {
                    return Err(mismatch());
                }
                let at = self.array_start(t2);
                for (kv, vv) in es {
                    self.pad(8);
                    self.value(kv, k, depth + 2)?;
                    self.value(vv, v, depth + 2)?;
                }
                self.array_end(at)?;
            }
            (Value::Struct(vs), Type::Struct(ts)) if vs.len() == ts.len() && !vs.is_empty() => {
                for (v, t) in vs.iter().zip(ts) {
                    self.value(v, t, depth + 1)?;
                }
            }
            _ => return Err(mismatch()),
        }
        Ok(())
    }

    /// Writes a length placeholder and the padding to the element; returns
    /// where the length is and where the elements start.
    fn array_start(&mut self, elem: &Type) -> (usize, usize) {
        self.pad(4);
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.pad(elem.align());
        (len_at, self.buf.len())
    }

    fn array_end(&mut self, (len_at, start): (usize, usize)) -> Result<(), WireError> {
        let n = self.buf.len() - start;
        if n > MAX_ARRAY as usize {
            return Err(WireError::Invalid("array over 64 MiB"));
        }
        self.buf[len_at..len_at + 4].copy_from_slice(&(n as u32).to_le_bytes());
        Ok(())
    }
}

/// An object path: `/`, or `/`-separated non-empty `[A-Za-z0-9_]` elements.
pub fn valid_path(s: &str) -> bool {
    s == "/"
        || (s.starts_with('/')
            && s[1..].split('/').all(|e| {
                !e.is_empty() && e.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
            }))
}

/// One whole message from exactly its bytes.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    let total = frame_len(bytes)?.ok_or(WireError::Truncated)?;
    if bytes.len() != total {
        return Err(if bytes.len() < total {
            WireError::Truncated
        } else {
            WireError::Invalid("bytes after the message")
        });
    }
    let big = bytes[0] == b'B';
    let kind = match bytes[1] {
        1 => Kind::MethodCall,
        2 => Kind::MethodReturn,
        3 => Kind::Error,
        4 => Kind::Signal,
        _ => return Err(WireError::Invalid("unknown message type")),
    };
    if bytes[3] != 1 {
        return Err(WireError::Invalid("protocol version is not 1"));
    }
    let mut r = Reader {
        buf: bytes,
        pos: 12,
        big,
    };
    let mut m = Message::new(kind, 0);
    m.flags = bytes[2];
    m.serial = {
        let mut s = Reader {
            buf: bytes,
            pos: 8,
            big,
        };
        s.u32()?
    };
    if m.serial == 0 {
        return Err(WireError::Invalid("serial 0"));
    }
    let header_field = Type::Array(Box::new(Type::Struct(vec![Type::Byte, Type::Variant])));
    let Value::Array(_, fields) = r.value(&header_field, 0, 0, 0)? else {
        return Err(WireError::Invalid("header fields"));
    };
    let mut sig = String::new();
    for f in fields {
        let Value::Struct(mut kv) = f else {
            return Err(WireError::Invalid("header field"));
        };
        let Some(Value::Variant(v)) = kv.pop() else {
            return Err(WireError::Invalid("header field"));
        };
        let Some(Value::Byte(code)) = kv.pop() else {
            return Err(WireError::Invalid("header field"));
        };
        let bad = WireError::Invalid("header field of the wrong type");
        match (code, *v) {
            (1, Value::ObjectPath(p)) => m.path = Some(p),
            (2, Value::Str(s)) => m.interface = Some(s),
            (3, Value::Str(s)) => m.member = Some(s),
            (4, Value::Str(s)) => m.error_name = Some(s),
            (5, Value::U32(u)) => m.reply_serial = Some(u),
            (6, Value::Str(s)) => m.destination = Some(s),
            (7, Value::Str(s)) => m.sender = Some(s),
            (8, Value::Signature(s)) => sig = s,
            (9, Value::U32(u)) => m.unix_fds = u,
            (1..=9, _) => return Err(bad),
            // Unknown fields are ignored (spec).
            _ => {}
        }
    }
    let required = match kind {
        Kind::MethodCall => m.path.is_some() && m.member.is_some(),
        Kind::Signal => m.path.is_some() && m.interface.is_some() && m.member.is_some(),
        Kind::Error => m.error_name.is_some() && m.reply_serial.is_some(),
        Kind::MethodReturn => m.reply_serial.is_some(),
    };
    if !required {
        return Err(WireError::Invalid("a required header field is missing"));
    }
    r.align(8)?;
    let body_start = r.pos;
    let types = parse_signature(&sig)?;
    // Offsets in the body count from its (8-aligned) start.
    let mut b = Reader {
        buf: &bytes[body_start..],
        pos: 0,
        big,
    };
    for t in &types {
        m.body.push(b.value(t, 0, 0, 0)?);
    }
    if b.pos != b.buf.len() {
        return Err(WireError::Invalid("body longer than its signature"));
    }
    Ok(m)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big: bool,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn align(&mut self, a: usize) -> Result<(), WireError> {
        let n = pad_to(self.pos, a);
        if self.take(n)?.iter().any(|&b| b != 0) {
            return Err(WireError::Invalid("non-zero padding"));
        }
        Ok(())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.align(N)?;
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        if self.big {
            a.reverse();
        }
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn text(&mut self, len: usize) -> Result<String, WireError> {
        let s = self.take(len)?;
        let s = std::str::from_utf8(s).map_err(|_| WireError::Invalid("string not UTF-8"))?;
        if s.contains('\0') {
            return Err(WireError::Invalid("NUL inside a string"));
        }
        let s = s.to_owned();
        if self.take(1)? != [0] {
            return Err(WireError::Invalid("string without its NUL"));
        }
        Ok(s)
    }

    fn sig(&mut self) -> Result<String, WireError> {
        let n = self.take(1)?[0] as usize;
        let s = self.text(n)?;
        parse_signature(&s)?;
        Ok(s)
    }

    /// `arrays`/`structs`: the enclosing containers; `total` includes variants.
    fn value(
        &mut self,
        t: &Type,
        arrays: u32,
        structs: u32,
        total: u32,
    ) -> Result<Value, WireError> {
        if total > MAX_TOTAL_DEPTH || arrays > MAX_DEPTH || structs > MAX_DEPTH {
            return Err(WireError::Invalid("nested too deep"));
        }
        Ok(match t {
            Type::Byte => Value::Byte(self.take(1)?[0]),
            Type::Bool => match self.u32()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(WireError::Invalid("boolean neither 0 nor 1")),
            },
            Type::I16 => Value::I16(i16::from_le_bytes(self.fixed()?)),
            Type::U16 => Value::U16(u16::from_le_bytes(self.fixed()?)),
            Type::I32 => Value::I32(i32::from_le_bytes(self.fixed()?)),
            Type::U32 => Value::U32(self.u32()?),
            Type::UnixFd => Value::UnixFd(self.u32()?),
            Type::I64 => Value::I64(i64::from_le_bytes(self.fixed()?)),
            Type::U64 => Value::U64(u64::from_le_bytes(self.fixed()?)),
            Type::Double => Value::Double(f64::from_le_bytes(self.fixed()?)),
            Type::Str => {
                let n = self.u32()? as usize;
                Value::Str(self.text(n)?)
            }
            Type::ObjectPath => {
                let n = self.u32()? as usize;
                let s = self.text(n)?;
                if !valid_path(&s) {
                    return Err(WireError::Invalid("bad object path"));
                }
                Value::ObjectPath(s)
            }
            Type::Signature => Value::Signature(self.sig()?),
            Type::Variant => {
                let s = self.sig()?;
                let mut ts = parse_signature(&s)?;
                if ts.len() != 1 {
                    return Err(WireError::Invalid("variant of not one type"));
                }
                let inner = ts.remove(0);
                Value::Variant(Box::new(self.value(&inner, arrays, structs, total + 1)?))
            }
            Type::Array(et) => {
                let n = self.u32()?;
                if n > MAX_ARRAY {
                    return Err(WireError::Invalid("array over 64 MiB"));
                }
                self.align(et.align())?;
                let end = self
                    .pos
                    .checked_add(n as usize)
                    .ok_or(WireError::Truncated)?;
                if end > self.buf.len() {
                    return Err(WireError::Truncated);
                }
                match &**et {
                    Type::Dict(k, v) => {
                        let mut es = Vec::new();
                        while self.pos < end {
                            self.align(8)?;
                            let kv = self.value(k, arrays + 1, structs + 1, total + 2)?;
                            let vv = self.value(v, arrays + 1, structs + 1, total + 2)?;
                            es.push((kv, vv));
                        }
                        if self.pos != end {
                            return Err(WireError::Invalid("array length mismatch"));
                        }
                        Value::Dict((**k).clone(), (**v).clone(), es)
                    }
                    _ => {
                        let mut items = Vec::new();
                        while self.pos < end {
                            items.push(self.value(et, arrays + 1, structs, total + 1)?);
                        }
                        if self.pos != end {
                            return Err(WireError::Invalid("array length mismatch"));
                        }
                        Value::Array((**et).clone(), items)
                    }
                }
            }
            Type::Struct(ts) => {
                self.align(8)?;
                let mut vs = Vec::with_capacity(ts.len());
                for t in ts {
                    vs.push(self.value(t, arrays, structs + 1, total + 1)?);
                }
                Value::Struct(vs)
            }
            Type::Dict(..) => return Err(WireError::Invalid("dict entry outside an array")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `Hello` as dbus-monitor / the spec's examples lay it out (serial 1).
    const HELLO: &[u8] = b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x6e\x00\x00\x00\
\x01\x01o\x00\x15\x00\x00\x00/org/freedesktop/DBus\x00\x00\x00\
\x06\x01s\x00\x14\x00\x00\x00org.freedesktop.DBus\x00\x00\x00\x00\
\x02\x01s\x00\x14\x00\x00\x00org.freedesktop.DBus\x00\x00\x00\x00\
\x03\x01s\x00\x05\x00\x00\x00Hello\x00\x00\x00";

    fn hello() -> Message {
        Message {
            interface: Some("org.freedesktop.DBus".into()),
            ..Message::call(
                1,
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "Hello",
                vec![],
            )
        }
    }

    #[test]
    fn hello_bytes() {
        // Our field order: path, interface, member, destination.
        let bytes = encode(&hello()).unwrap();
        assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
        assert_eq!(decode(&bytes).unwrap(), hello());
        // The reference bytes (path, destination, interface, member order).
        assert_eq!(decode(HELLO).unwrap(), hello());
        assert_eq!(HELLO.len(), 16 + 0x6e + 2);
    }

    #[test]
    fn hand_checked_body() {
        // A METHOD_RETURN with body "sb" = ("hi", true), big-endian.
        let mut m = b"B\x02\x00\x01\x00\x00\x00\x0c\x00\x00\x00\x07\x00\x00\x00\x10".to_vec();
        m.extend_from_slice(b"\x05\x01u\x00\x00\x00\x00\x03"); // REPLY_SERIAL 3
        m.extend_from_slice(b"\x08\x01g\x00\x02sb\x00"); // SIGNATURE "sb"
        // Fields end at 32: no padding before the body.
        m.extend_from_slice(b"\x00\x00\x00\x02hi\x00\x00\x00\x00\x00\x01");
        let d = decode(&m).unwrap();
        assert_eq!(d.kind, Kind::MethodReturn);
        assert_eq!((d.serial, d.reply_serial), (7, Some(3)));
        assert_eq!(d.body, vec![Value::str("hi"), Value::Bool(true)]);
        // The same, little-endian, round-trips to our own encoding.
        let le = encode(&d).unwrap();
        assert_eq!(&le[..4], b"l\x02\x00\x01");
        assert_eq!(
            &le[le.len() - 12..],
            b"\x02\x00\x00\x00hi\x00\x00\x01\x00\x00\x00"
        );
    }

    #[test]
    fn strictness() {
        let good = encode(&hello()).unwrap();
        let reject = |f: &dyn Fn(&mut Vec<u8>), why: &str| {
            let mut b = good.clone();
            f(&mut b);
            assert!(decode(&b).is_err(), "{why}");
        };
        reject(&|b| b[0] = b'x', "endianness");
        reject(&|b| b[3] = 2, "version");
        reject(&|b| b[1] = 9, "type");
        reject(&|b| b[8..12].copy_from_slice(&[0; 4]), "serial 0");
        reject(&|b| b.push(0), "trailing byte");
        reject(
            &|b| {
                b.pop();
            },
            "truncated",
        );
        // Non-zero padding after the path string (16 + 8 + 21 + NUL = 46, pad to 48).
        reject(&|b| b[46] = 1, "padding");
        // Not UTF-8 in the path.
        reject(&|b| b[25] = 0xff, "utf-8");
        // A missing NUL after a string.
        reject(&|b| b[45] = b'x', "nul");
        // A huge declared body.
        let mut b = good.clone();
        b[4..8].copy_from_slice(&(MAX_MESSAGE as u32).to_le_bytes());
        assert!(matches!(frame_len(&b), Err(WireError::TooLong(_))));
        // A signal without an interface.
        let mut s = hello();
        s.kind = Kind::Signal;
        s.interface = None;
        assert!(decode(&encode(&s).unwrap()).is_err());
        // Booleans are 0 or 1.
        let m = Message {
            reply_serial: Some(1),
            body: vec![Value::Bool(true)],
            ..Message::new(Kind::MethodReturn, 2)
        };
        let mut b = encode(&m).unwrap();
        let n = b.len();
        b[n - 4] = 2;
        assert!(decode(&b).is_err());
    }

    #[test]
    fn signatures() {
        assert_eq!(parse_signature("a{oa{sa{sv}}}").unwrap().len(), 1);
        assert_eq!(parse_signature("sa(su)ub").unwrap().len(), 4);
        for bad in [
            "(", "()", "a", "{sv}", "a{vs}", "a{s}", "a{svs}", "z", "(s", "a{sv",
        ] {
            assert!(parse_signature(bad).is_err(), "{bad}");
        }
        assert!(
            parse_signature(
                &"a".repeat(32)
                    .chars()
                    .chain("y".chars())
                    .collect::<String>()
            )
            .is_ok()
        );
        assert!(parse_signature(&format!("{}y", "a".repeat(33))).is_err());
        assert!(parse_signature(&format!("{}y{}", "(".repeat(33), ")".repeat(33))).is_err());
        for t in parse_signature("ybnqiuxtdsoghva{sv}(i(s))").unwrap() {
            assert_eq!(parse_signature(&t.to_string()).unwrap(), vec![t]);
        }
    }

    #[test]
    fn deep_variants_are_refused_not_recursed() {
        // 70 nested variants around a byte: over the 64-container cap.
        let mut v = Value::Byte(1);
        for _ in 0..70 {
            v = Value::Variant(Box::new(v));
        }
        let m = Message {
            reply_serial: Some(1),
            body: vec![v],
            ..Message::new(Kind::MethodReturn, 2)
        };
        assert!(encode(&m).is_err());
        // Hand-made: "v" then 70 × "v\0"-signatures.
        let mut body = Vec::new();
        for _ in 0..70 {
            body.extend_from_slice(b"\x01v\x00");
        }
        body.extend_from_slice(b"\x01y\x00\x05");
        let mut b = b"l\x02\x00\x01".to_vec();
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        // 15 bytes of fields (the padding after the last one is not counted).
        b.extend_from_slice(&15u32.to_le_bytes());
        b.extend_from_slice(b"\x05\x01u\x00\x01\x00\x00\x00\x08\x01g\x00\x01v\x00\x00");
        b.extend_from_slice(&body);
        assert_eq!(decode(&b), Err(WireError::Invalid("nested too deep")));
    }

    fn basic() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u8>().prop_map(Value::Byte),
            any::<bool>().prop_map(Value::Bool),
            any::<i16>().prop_map(Value::I16),
            any::<u16>().prop_map(Value::U16),
            any::<i32>().prop_map(Value::I32),
            any::<u32>().prop_map(Value::U32),
            any::<i64>().prop_map(Value::I64),
            any::<u64>().prop_map(Value::U64),
            (-1e300f64..1e300).prop_map(Value::Double),
            "[^\\x00]{0,12}".prop_map(Value::Str),
            "(/[A-Za-z0-9_]{1,5}){0,3}".prop_map(|p| Value::ObjectPath(if p.is_empty() {
                "/".into()
            } else {
                p
            })),
            "[ybsuv]{0,4}".prop_map(Value::Signature),
            any::<u32>().prop_map(Value::UnixFd),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        basic().prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|v| Value::Variant(Box::new(v))),
                prop::collection::vec(inner.clone(), 1..4).prop_map(Value::Struct),
                // Arrays of one type: a template element repeated.
                (inner.clone(), 0usize..3).prop_map(|(v, n)| Value::Array(v.type_of(), vec![v; n])),
                (basic(), inner, 0usize..3).prop_map(|(k, v, n)| Value::Dict(
                    k.type_of(),
                    v.type_of(),
                    vec![(k, v); n]
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = frame_len(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(body in prop::collection::vec(value(), 0..3), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let m = Message { reply_serial: Some(9), body, ..Message::new(Kind::MethodReturn, 1) };
            if let Ok(mut b) = encode(&m) {
                let i = at.index(b.len());
                b[i] = byte;
                let _ = decode(&b);
            }
        }

        #[test]
        fn round_trip(body in prop::collection::vec(value(), 0..4), serial in 1u32.., fds in 0u32..4) {
            let m = Message {
                sender: Some(":1.7".into()),
                unix_fds: fds,
                ..Message::call(serial, "org.example", "/a/b", "org.example.I", "M", body)
            };
            let b = encode(&m).unwrap();
            prop_assert_eq!(frame_len(&b).unwrap(), Some(b.len()));
            prop_assert_eq!(decode(&b).unwrap(), m);
        }
    }
}
