//! `{{var}}` templates of transaction steps (issue 18), JSON pointers, and the
//! secrets they may name. Pure: no I/O, no clock.
//!
//! Contract:
//! - A template is text with `{{NAME}}` (a value an earlier step extracted,
//!   or the built-ins `{{unit}}` and `{{agency}}`) and `{{cred.NAME}}` (a
//!   credential from the probe's credentials file). Names are 1 to 64 of
//!   `A-Z a-z 0-9 _ -`; there is no escape and no whitespace inside the
//!   braces; a `{{` without its `}}` is refused. A lone `}}` is literal.
//! - [`Template::render`] substitutes as is ([`Encoding::Raw`]: header
//!   values, bodies), percent-encoded ([`Encoding::Url`]: a URL's path and
//!   query, every byte but the unreserved `A-Z a-z 0-9 - . _ ~`) or
//!   JSON-string-escaped ([`Encoding::Json`]: the body of a step whose
//!   `Content-Type` is JSON). Literal text is never encoded.
//! - [`Secret`] holds a credential: its `Debug` never shows it, and nothing
//!   here formats one into an error.
//! - [`check_pointer`]: RFC 6901 — empty (the whole document) or starting
//!   with `/`, a `~` only as `~0` or `~1`.
//! - [`extracted_value`]: what a JSON value becomes as a variable (a string's
//!   text, a number's or boolean's JSON text), refused when it holds control
//!   characters or is longer than [`MAX_VALUE`].

use std::collections::BTreeMap;
use std::fmt;

/// The longest extracted value (a token, an id).
pub const MAX_VALUE: usize = 4096;

/// The longest variable or credential name.
pub const MAX_NAME: usize = 64;

/// A variable a template names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Var {
    /// `{{cred.NAME}}`
    Cred(String),
    /// `{{unit}}`: the unit id.
    Unit,
    /// `{{agency}}`
    Agency,
    /// `{{NAME}}`: extracted by an earlier step.
    Extracted(String),
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::Cred(n) => write!(f, "{{{{cred.{n}}}}}"),
            Var::Unit => f.write_str("{{unit}}"),
            Var::Agency => f.write_str("{{agency}}"),
            Var::Extracted(n) => write!(f, "{{{{{n}}}}}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template, pointer or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a {{{{ at byte {0} has no closing }}}}")]
    Unclosed(usize),
    #[error(
        "{{{{{0}}}}} is not a variable: names are 1 to 64 of A-Z a-z 0-9 _ - (credentials as {{{{cred.NAME}}}})"
    )]
    BadName(String),
    #[error("{0:?} is not a JSON pointer: write \"\" for the whole body or /a/b (RFC 6901)")]
    PointerStart(String),
    #[error("{0:?} is not a JSON pointer: a ~ must be followed by 0 or 1 (RFC 6901)")]
    PointerTilde(String),
}

/// Whether `s` is a valid variable or credential name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How substituted values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As is (header values, bodies).
    Raw,
    /// Percent-encoded but for the unreserved characters (URL path and query).
    Url,
    /// Escaped as the inside of a JSON string (`"` `\\` and control
    /// characters): a body whose step sends `Content-Type: …json`, so a
    /// password with a quote still makes a valid login body.
    Json,
}

/// Where a template's variables get their values.
pub trait Lookup {
    fn value(&self, var: &Var) -> Option<&str>;
}

/// A variable had no value at render time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} has no value")]
pub struct Unset(pub Var);

impl Template {
    /// Parses `s`.
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or(TemplateError::Unclosed(offset + open))?;
            let name = &after[..close];
            let var = match name.strip_prefix("cred.") {
                Some(c) if valid_name(c) => Var::Cred(c.to_owned()),
                Some(_) => return Err(TemplateError::BadName(name.to_owned())),
                None if name == "unit" => Var::Unit,
                None if name == "agency" => Var::Agency,
                None if valid_name(name) => Var::Extracted(name.to_owned()),
                None => return Err(TemplateError::BadName(name.to_owned())),
            };
            parts.push(Part::Var(var));
            let used = open + 2 + close + 2;
            offset += used;
            rest = &rest[used..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The variables it names, in order (with repeats).
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Lit(_) => None,
        })
    }

    /// Its literal text (variables left out).
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Lit(s) => Some(s.as_str()),
            Part::Var(_) => None,
        })
    }

    /// The text with every variable replaced from `values`.
    pub fn render(&self, values: &dyn Lookup, enc: Encoding) -> Result<String, Unset> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => {
                    let val = values.value(v).ok_or_else(|| Unset(v.clone()))?;
                    match enc {
                        Encoding::Raw => out.push_str(val),
                        Encoding::Url => percent_encode(val, &mut out),
                        Encoding::Json => {
                            let quoted = serde_json::Value::from(val).to_string();
                            out.push_str(&quoted[1..quoted.len() - 1]);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Appends `s` percent-encoded (all but `A-Z a-z 0-9 - . _ ~`).
pub fn percent_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// Checks an RFC 6901 JSON pointer.
pub fn check_pointer(p: &str) -> Result<(), TemplateError> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err(TemplateError::PointerStart(p.to_owned()));
    }
    let b = p.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'~' && !matches!(b.get(i + 1), Some(b'0' | b'1')) {
            return Err(TemplateError::PointerTilde(p.to_owned()));
        }
    }
    Ok(())
}

/// Why a JSON value cannot become a variable (fixed phrases: the value
/// itself is never in them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("is not a string, number or boolean")]
    NotScalar,
    #[error("is longer than 4096 bytes")]
    TooLong,
    #[error("holds control characters")]
    Control,
}

/// Checks a value about to become a variable.
pub fn check_value(s: &str) -> Result<(), ValueError> {
    if s.len() > MAX_VALUE {
        return Err(ValueError::TooLong);
    }
    if s.chars().any(char::is_control) {
        return Err(ValueError::Control);
    }
    Ok(())
}

/// What a JSON value becomes as a variable.
pub fn extracted_value(v: &serde_json::Value) -> Result<String, ValueError> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return Err(ValueError::NotScalar),
    };
    check_value(&s)?;
    Ok(s)
}

/// A credential. `Debug` shows `<redacted>`; the text is reached only
/// through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A probe's credentials, by name.
pub type Secrets = BTreeMap<String, Secret>;

/// The values of one run: the built-ins, the credentials, and what the
/// steps so far extracted.
pub struct Values<'a> {
    pub unit: &'a str,
    pub agency: &'a str,
    pub creds: &'a Secrets,
    pub extracted: &'a BTreeMap<String, String>,
}

impl Lookup for Values<'_> {
    fn value(&self, var: &Var) -> Option<&str> {
        match var {
            Var::Cred(n) => self.creds.get(n).map(Secret::expose),
            Var::Unit => Some(self.unit),
            Var::Agency => Some(self.agency),
            Var::Extracted(n) => self.extracted.get(n).map(String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(creds: &'a Secrets, extracted: &'a BTreeMap<String, String>) -> Values<'a> {
        Values {
            unit: "E 3",
            agency: "metro-fire",
            creds,
            extracted,
        }
    }

    #[test]
    fn parse_and_render_table() {
        let creds: Secrets = [("password".to_owned(), Secret::new("p@ss/w\"rd".into()))].into();
        let ext: BTreeMap<String, String> = [("token".to_owned(), "abc+def".to_owned())].into();
        let v = values(&creds, &ext);
        let cases = [
            // (template, raw, url, json)
            ("plain", "plain", "plain", "plain"),
            (
                "/api/units/{{unit}}/a",
                "/api/units/E 3/a",
                "/api/units/E%203/a",
                "/api/units/E 3/a",
            ),
            (
                "Bearer {{token}}",
                "Bearer abc+def",
                "Bearer abc%2Bdef",
                "Bearer abc+def",
            ),
            (
                r#"{"p":"{{cred.password}}","a":"{{agency}}"}"#,
                r#"{"p":"p@ss/w"rd","a":"metro-fire"}"#,
                r#"{"p":"p%40ss%2Fw%22rd","a":"metro-fire"}"#,
                r#"{"p":"p@ss/w\"rd","a":"metro-fire"}"#,
            ),
            (
                "{{token}}{{token}}",
                "abc+defabc+def",
                "abc%2Bdefabc%2Bdef",
                "abc+defabc+def",
            ),
            ("a }} b", "a }} b", "a }} b", "a }} b"),
            ("", "", "", ""),
        ];
        for (t, raw, url, json) in cases {
            let tpl = Template::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(tpl.render(&v, Encoding::Raw).unwrap(), raw, "{t}");
            assert_eq!(tpl.render(&v, Encoding::Url).unwrap(), url, "{t}");
            assert_eq!(tpl.render(&v, Encoding::Json).unwrap(), json, "{t}");
        }
        let t = Template::parse("{{cred.user}}:{{unit}}:{{x}}:{{agency}}").unwrap();
        assert_eq!(
            t.vars().cloned().collect::<Vec<_>>(),
            vec![
                Var::Cred("user".into()),
                Var::Unit,
                Var::Extracted("x".into()),
                Var::Agency
            ]
        );
        assert_eq!(
            t.render(&v, Encoding::Raw),
            Err(Unset(Var::Cred("user".into())))
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        let cases = [
            ("a {{token", TemplateError::Unclosed(2)),
            ("{{}}", TemplateError::BadName("".into())),
            ("{{ token }}", TemplateError::BadName(" token ".into())),
            ("{{cred.}}", TemplateError::BadName("cred.".into())),
            ("{{a.b}}", TemplateError::BadName("a.b".into())),
            ("x{{ok}}{{", TemplateError::Unclosed(7)),
        ];
        for (t, want) in cases {
            assert_eq!(Template::parse(t), Err(want), "{t}");
        }
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        for ok in ["", "/", "/token", "/a/0/b", "/a~1b", "/m~0n", "/~01"] {
            assert_eq!(check_pointer(ok), Ok(()), "{ok}");
        }
        for bad in ["token", "a/b", "/a~", "/a~2", "/~x"] {
            assert!(check_pointer(bad).is_err(), "{bad}");
        }
        let doc: serde_json::Value =
            serde_json::from_str(r#"{"a/b":1,"m~n":"x","t":true,"o":{},"n":null}"#).unwrap();
        assert_eq!(
            extracted_value(doc.pointer("/a~1b").unwrap()),
            Ok("1".into())
        );
        assert_eq!(
            extracted_value(doc.pointer("/m~0n").unwrap()),
            Ok("x".into())
        );
        assert_eq!(
            extracted_value(doc.pointer("/t").unwrap()),
            Ok("true".into())
        );
        assert_eq!(
            extracted_value(doc.pointer("/o").unwrap()),
            Err(ValueError::NotScalar)
        );
        assert_eq!(
            extracted_value(doc.pointer("/n").unwrap()),
            Err(ValueError::NotScalar)
        );
        assert_eq!(
            extracted_value(&serde_json::Value::String("a\r\nb".into())),
            Err(ValueError::Control)
        );
        assert_eq!(
            extracted_value(&serde_json::Value::String("x".repeat(MAX_VALUE + 1))),
            Err(ValueError::TooLong)
        );
    }

    #[test]
    fn a_secret_never_shows_in_debug() {
        let s: Secrets = [("pw".to_owned(), Secret::new("hunter2".into()))].into();
        let text = format!("{s:?}");
        assert!(
            !text.contains("hunter2") && text.contains("<redacted>"),
            "{text}"
        );
    }
}
