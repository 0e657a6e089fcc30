//! Runbooks: what the support desk does about a flag, one Markdown page
//! per rule.
//!
//! Every shipped rule has a built-in runbook (`collector/runbooks/<rule>.md`,
//! embedded in the binary). A site adds its own, or replaces a built-in one,
//! with `<rule>.md` files in `[runbooks] dir`, read at start (a restart picks
//! up edits): a site file of a built-in rule's name overrides it. The site
//! directory is bounded: at most [`MAX_SITE_RUNBOOKS`] runbooks of at most
//! [`MAX_RUNBOOK_BYTES`] each, UTF-8; a file over a limit, not UTF-8 or
//! named other than a rule could be is an error naming the file, at start
//! and in `check-config`. Other files (not `*.md`, or hidden: `.x.md`) and
//! subdirectories are ignored.
//!
//! A rule without its own runbook URL links to the collector's page for it,
//! `/runbooks/<rule>`, when there is a runbook of that name
//! ([`crate::rules::RulesConfig::runbook_link`]); a rule with neither is
//! what `check-config` warns about ([`Runbooks::missing`]).
//!
//! The feed serves them (`crate::feed::runbooks`): rendered at
//! `/runbooks/{rule}` ([`render::to_html`]: raw HTML escaped, unsafe link
//! schemes dropped), raw at `/api/v1/runbooks/{rule}`.
//!
//! A runbook may start with front matter (issue 17), a block between two
//! `---` lines, naming the action that helps with its flag:
//!
//! ```text
//! ---
//! action: restart-cad-client
//! ---
//! ```
//!
//! `action` is the only key read ([`front_matter`]); it is served as the
//! runbook's `action` (the name of an `[[action]]` in the agents' config,
//! which an operator may request). The block is neither rendered nor in
//! the served Markdown. Any other key, a line that is not `key: value`,
//! or an action that is not an action name is a `check-config` warning
//! naming the file ([`Runbooks::warnings`]), never an error.

pub mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Site runbooks read at most (`*.md` files in `[runbooks] dir`).
pub const MAX_SITE_RUNBOOKS: usize = 256;
/// The largest runbook accepted, in bytes.
pub const MAX_RUNBOOK_BYTES: usize = 64 * 1024;

/// The runbooks shipped in the binary, by rule name: the built-in rules
/// and the shipped threshold rules (`rules/default_rules.toml`).
pub const BUILTIN: &[(&str, &str)] = &[
    ("off", include_str!("../../runbooks/off.md")),
    ("overdue", include_str!("../../runbooks/overdue.md")),
    ("lost.will", include_str!("../../runbooks/lost.will.md")),
    ("lost.stale", include_str!("../../runbooks/lost.stale.md")),
    ("clock_skew", include_str!("../../runbooks/clock_skew.md")),
    ("incident", include_str!("../../runbooks/incident.md")),
    (
        "slower-than-peers",
        include_str!("../../runbooks/slower-than-peers.md"),
    ),
    (
        "latency-shift",
        include_str!("../../runbooks/latency-shift.md"),
    ),
    (
        "agency-traffic-drop",
        include_str!("../../runbooks/agency-traffic-drop.md"),
    ),
    ("cpu-high", include_str!("../../runbooks/cpu-high.md")),
    ("memory-high", include_str!("../../runbooks/memory-high.md")),
    ("swap-high", include_str!("../../runbooks/swap-high.md")),
    ("disk-full", include_str!("../../runbooks/disk-full.md")),
    (
        "disk-critical",
        include_str!("../../runbooks/disk-critical.md"),
    ),
    (
        "cad-client-down",
        include_str!("../../runbooks/cad-client-down.md"),
    ),
    (
        "cad-api-failing",
        include_str!("../../runbooks/cad-api-failing.md"),
    ),
    (
        "probe-failing",
        include_str!("../../runbooks/probe-failing.md"),
    ),
    ("probe-slow", include_str!("../../runbooks/probe-slow.md")),
    (
        "latency-spike",
        include_str!("../../runbooks/latency-spike.md"),
    ),
    (
        "traffic-drop",
        include_str!("../../runbooks/traffic-drop.md"),
    ),
    ("icmp-loss", include_str!("../../runbooks/icmp-loss.md")),
    (
        "cert-expiring",
        include_str!("../../runbooks/cert-expiring.md"),
    ),
    (
        "buffer-backlog",
        include_str!("../../runbooks/buffer-backlog.md"),
    ),
    ("vpn-down", include_str!("../../runbooks/vpn-down.md")),
    ("signal-weak", include_str!("../../runbooks/signal-weak.md")),
];

/// The names of the built-in runbooks.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// Where a runbook comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Shipped in the binary.
    Builtin,
    /// A file in `[runbooks] dir` (it may override a built-in one).
    Site,
}

/// One runbook.
#[derive(Debug, Clone)]
pub struct Runbook {
    pub rule: String,
    pub source: Source,
    /// Its Markdown, without the front matter.
    pub markdown: Arc<str>,
    /// The action its front matter suggests (`action: <name>`).
    pub action: Option<String>,
    /// What its front matter got wrong (check-config warns).
    pub warnings: Vec<String>,
    /// The text of its first heading, if it starts with one.
    pub title: Option<String>,
    /// The rendered HTML fragment ([`render::to_html`]), made once.
    pub html: Arc<str>,
}

impl Runbook {
    fn new(rule: &str, source: Source, text: &str) -> Self {
        let (fm, body) = front_matter(text);
        let fm = fm.unwrap_or_default();
        Runbook {
            rule: rule.to_owned(),
            source,
            title: render::title(body),
            html: render::to_html(body).into(),
            markdown: Arc::from(body),
            action: fm.action,
            warnings: fm.warnings,
        }
    }
}

/// What a runbook's front matter says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontMatter {
    /// `action: <name>`, when it names a valid action.
    pub action: Option<String>,
    /// Everything else in the block, in words.
    pub warnings: Vec<String>,
}

/// Splits `text` into its front matter (a first line `---`, then lines up
/// to the next `---` line) and the rest. Without a closing `---` there is
/// no front matter (a runbook may open with a thematic break). Pure.
pub fn front_matter(text: &str) -> (Option<FrontMatter>, &str) {
    let line_end = |s: &str| s.find('\n').map_or(s.len(), |i| i + 1);
    let first = &text[..line_end(text)];
    if first.trim_end_matches(['\r', '\n']) != "---" {
        return (None, text);
    }
    let mut pos = first.len();
    let mut lines = Vec::new();
    loop {
        if pos >= text.len() {
            return (None, text);
        }
        let rest = &text[pos..];
        let line = &rest[..line_end(rest)];
        pos += line.len();
        let l = line.trim_end_matches(['\r', '\n']);
        if l == "---" {
            break;
        }
        lines.push(l);
    }
    let mut fm = FrontMatter::default();
    for (i, l) in lines.iter().enumerate() {
        let n = i + 2;
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((k, v)) = t.split_once(':') else {
            fm.warnings
                .push(format!("front matter line {n}: {t:?} is not `key: value`"));
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        match k {
            "action" if fm.action.is_some() => fm
                .warnings
                .push(format!("front matter line {n}: action is set twice")),
            "action" => match muster_proto::action::check_name(
                "action",
                v,
                muster_proto::action::MAX_ACTION_NAME,
            ) {
                Ok(()) => fm.action = Some(v.to_owned()),
                Err(e) => fm.warnings.push(format!("front matter line {n}: {e}")),
            },
            other => fm.warnings.push(format!(
                "front matter line {n}: unknown key {other:?} (only `action` is read)"
            )),
        }
    }
    (Some(fm), &text[pos..])
}

/// Why the site's runbooks were refused; each names the file or directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunbookError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
}

fn err(path: &Path, problem: impl Into<String>) -> RunbookError {
    RunbookError::File {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// May a runbook be named this (a rule name: letters, digits, `-`, `_`,
/// `.`; at most 64 bytes)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The runbooks this collector serves, by rule name.
#[derive(Debug, Clone)]
pub struct Runbooks {
    by_rule: BTreeMap<String, Runbook>,
    /// `[runbooks] dir`, when set.
    pub dir: Option<PathBuf>,
}

impl Default for Runbooks {
    /// The built-in runbooks only.
    fn default() -> Self {
        let by_rule = BUILTIN
            .iter()
            .map(|(rule, md)| ((*rule).to_owned(), Runbook::new(rule, Source::Builtin, md)))
            .collect();
        Runbooks { by_rule, dir: None }
    }
}

impl Runbooks {
    /// The built-in runbooks, with the site's from `dir` over them.
    pub fn load(dir: Option<&Path>) -> Result<Runbooks, RunbookError> {
        let mut books = Runbooks::default();
        if let Some(dir) = dir {
            books.dir = Some(dir.to_owned());
            for (rule, markdown) in read_site(dir)? {
                let book = Runbook::new(&rule, Source::Site, &markdown);
                books.by_rule.insert(rule, book);
            }
        }
        Ok(books)
    }

    pub fn get(&self, rule: &str) -> Option<&Runbook> {
        self.by_rule.get(rule)
    }

    pub fn contains(&self, rule: &str) -> bool {
        self.by_rule.contains_key(rule)
    }

    /// Every runbook, by rule name.
    pub fn iter(&self) -> impl Iterator<Item = &Runbook> {
        self.by_rule.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_rule.keys().map(String::as_str)
    }

    /// What the runbooks' front matter got wrong, each naming the file
    /// (`check-config` prints them; `run` logs them).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for b in self.by_rule.values() {
            let file = match (b.source, &self.dir) {
                (Source::Site, Some(d)) => d.join(format!("{}.md", b.rule)).display().to_string(),
                _ => format!("built-in runbook {}.md", b.rule),
            };
            for w in &b.warnings {
                out.push(format!("{file}: {w}"));
            }
        }
        out
    }

    /// The rules in force that have neither a runbook here nor a runbook
    /// URL of their own, each as `(rule, the config key to set)`.
    pub fn missing(&self, rules: &crate::rules::RulesConfig) -> Vec<(String, String)> {
        rules
            .runbook_sources()
            .into_iter()
            .filter(|(rule, _, url)| url.is_none() && !self.contains(rule))
            .map(|(rule, key, _)| (rule, key))
            .collect()
    }
}

/// The `*.md` files of `dir`, as (rule, text), sorted by name.
fn read_site(dir: &Path) -> Result<Vec<(String, String)>, RunbookError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot read the directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, format!("cannot read the directory: {e}")))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            // Not UTF-8: not a rule's name, and not `.md` as far as we can say.
            if name.as_encoded_bytes().ends_with(b".md") {
                return Err(err(&path, "the file name is not UTF-8"));
            }
            continue;
        };
        let Some(rule) = name.strip_suffix(".md") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // Follows symlinks: a link to a runbook elsewhere is a runbook.
        let meta = std::fs::metadata(&path).map_err(|e| err(&path, e.to_string()))?;
        if meta.is_dir() {
            continue;
        }
        if !valid_name(rule) {
            return Err(err(
                &path,
                format!(
                    "{rule:?} is not a rule name (letters, digits, - _ ., at most 64): a runbook is named <rule>.md"
                ),
            ));
        }
        files.push((rule.to_owned(), path, meta.len()));
    }
    files.sort();
    if files.len() > MAX_SITE_RUNBOOKS {
        return Err(err(
            dir,
            format!(
                "{} runbooks (*.md), more than the {MAX_SITE_RUNBOOKS} a site may have",
                files.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(files.len());
    for (rule, path, len) in files {
        let too_big = |n: u64| {
            err(
                &path,
                format!("{n} bytes, more than the {MAX_RUNBOOK_BYTES} a runbook may have"),
            )
        };
        if len > MAX_RUNBOOK_BYTES as u64 {
            return Err(too_big(len));
        }
        // Bounded even if the file grows after the size check.
        let mut bytes = Vec::with_capacity(len as usize);
        let f = std::fs::File::open(&path).map_err(|e| err(&path, e.to_string()))?;
        use std::io::Read;
        f.take(MAX_RUNBOOK_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(&path, e.to_string()))?;
        if bytes.len() > MAX_RUNBOOK_BYTES {
            return Err(too_big(bytes.len() as u64));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            err(
                &path,
                format!(
                    "is not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        out.push((rule, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "muster-runbooks-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-")
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn every_shipped_rule_has_a_builtin_runbook_that_says_the_five_things() {
        let books = Runbooks::default();
        let cfg = crate::rules::RulesConfig::default();
        let mut rules: Vec<String> = cfg
            .runbook_sources()
            .into_iter()
            .map(|(r, _, _)| r)
            .collect();
        rules.sort();
        let mut names: Vec<&str> = builtin_names().collect();
        names.sort();
        assert_eq!(
            rules, names,
            "the shipped rules and the built-in runbooks differ"
        );
        assert!(books.missing(&cfg).is_empty(), "{:?}", books.missing(&cfg));
        for b in books.iter() {
            let md = &*b.markdown;
            let title = b.title.as_deref().unwrap_or_default();
            assert!(
                title.contains(&format!("`{}`", b.rule)) || title.contains(&b.rule),
                "{}: the title names the rule: {title:?}",
                b.rule
            );
            for section in [
                "## What it means",
                "## Confirm it",
                "## Likely causes",
                "## Fix",
                "## Escalate",
            ] {
                assert!(md.contains(section), "{}: no {section:?}", b.rule);
            }
            assert!(
                md.len() > 1_500,
                "{}: {} bytes is too thin",
                b.rule,
                md.len()
            );
            assert!(md.len() <= MAX_RUNBOOK_BYTES);
            assert!(!md.contains("runbooks.example.org"), "{}", b.rule);
            assert!(!b.html.contains("<script"), "{}", b.rule);
        }
    }

    #[test]
    fn the_fields_a_runbook_names_are_the_feeds() {
        // Every `latest.…`, `agent.…`, `presence.…` or `seq.…` path a
        // built-in runbook tells the desk to read is in the feed's
        // UnitDetail schema (openapi.json), so a rename there fails here.
        let doc: serde_json::Value = serde_json::from_str(crate::feed::openapi::DOCUMENT).unwrap();
        fn resolve<'a>(
            doc: &'a serde_json::Value,
            mut s: &'a serde_json::Value,
        ) -> &'a serde_json::Value {
            loop {
                if let Some(r) = s.get("$ref").and_then(|r| r.as_str()) {
                    s = doc.pointer(r.trim_start_matches('#')).unwrap();
                } else if let Some(one) = s.get("oneOf").or_else(|| s.get("anyOf")) {
                    s = one
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|x| x.get("type") != Some(&serde_json::json!("null")))
                        .unwrap();
                } else {
                    return s;
                }
            }
        }
        let has = |path: &str| -> bool {
            let mut s = &doc["components"]["schemas"]["UnitDetail"];
            for part in path.split('.') {
                let part = part.trim_end_matches("[]");
                s = resolve(&doc, s);
                if let Some(items) = s.get("items") {
                    s = resolve(&doc, items);
                }
                match s["properties"].get(part) {
                    Some(p) => s = p,
                    None => return false,
                }
            }
            true
        };
        let roots = [
            "latest.",
            "agent.",
            "presence.",
            "seq.",
            "facts.",
            "reasons[].",
            "boots[].",
        ];
        let top = [
            "status",
            "online",
            "since_ms",
            "last_seen_ms",
            "last_at_ms",
            "first_seen_ms",
            "interval_ms",
            "incidents",
            "labels",
        ];
        let mut checked = 0;
        for (rule, md) in BUILTIN {
            // After the header, whose "Reason field" names the rule's field
            // (`presence.shutdown`), not a JSON path.
            let body = &md[md.find("\n## ").unwrap_or(0)..];
            for span in body.split('`').skip(1).step_by(2) {
                if !(roots.iter().any(|r| span.starts_with(r)) || top.contains(&span))
                    || span.contains(' ')
                    || span.contains('"')
                {
                    continue;
                }
                assert!(
                    has(span),
                    "{rule}: `{span}` is not a field of the unit detail"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} field paths checked");
    }

    #[test]
    fn front_matter_names_an_action_and_everything_else_is_a_warning() {
        type Case = (
            &'static str,
            Option<&'static str>,
            &'static [&'static str],
            &'static str,
        );
        let cases: &[Case] = &[
            // No front matter.
            ("# t\n", None, &[], "# t\n"),
            ("", None, &[], ""),
            // A thematic break that never closes is Markdown.
            ("---\n# t\n", None, &[], "---\n# t\n"),
            (
                "---\naction: restart-cad-client\n---\n# t\n",
                Some("restart-cad-client"),
                &[],
                "# t\n",
            ),
            (
                "---\r\naction: \"flush-dns\"\r\n---\r\n# t",
                Some("flush-dns"),
                &[],
                "# t",
            ),
            (
                "---\n\n# a comment\naction: 'x1'\n---\n",
                Some("x1"),
                &[],
                "",
            ),
            ("---\n---\nbody", None, &[], "body"),
            (
                "---\naction: Restart CAD\n---\n# t\n",
                None,
                &["front matter line 2: action \"Restart CAD\" must be 1 to 64 of a-z"],
                "# t\n",
            ),
            (
                "---\ntitle: x\naction: a\nowner\naction: b\n---\n# t\n",
                Some("a"),
                &[
                    "front matter line 2: unknown key \"title\" (only `action` is read)",
                    "front matter line 4: \"owner\" is not `key: value`",
                    "front matter line 5: action is set twice",
                ],
                "# t\n",
            ),
        ];
        for (text, action, warnings, body) in cases {
            let (fm, rest) = front_matter(text);
            assert_eq!(rest, *body, "{text:?}");
            let fm = fm.unwrap_or_default();
            assert_eq!(fm.action.as_deref(), *action, "{text:?}");
            assert_eq!(
                fm.warnings.len(),
                warnings.len(),
                "{text:?}: {:?}",
                fm.warnings
            );
            for (got, want) in fm.warnings.iter().zip(warnings.iter()) {
                assert!(got.starts_with(want), "{text:?}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn the_cad_client_runbook_suggests_restarting_it_and_no_builtin_warns() {
        let books = Runbooks::default();
        let cad = books.get("cad-client-down").unwrap();
        assert_eq!(cad.action.as_deref(), Some("restart-cad-client"));
        assert!(!cad.markdown.contains("action:"), "the block is not served");
        assert!(!cad.html.contains("action:"), "nor rendered");
        assert_eq!(
            cad.title.as_deref(),
            Some("cad-client-down: the CAD client is not running")
        );
        assert!(books.warnings().is_empty(), "{:?}", books.warnings());
        assert_eq!(books.get("cpu-high").unwrap().action, None);
        // A site's front matter problems name its file.
        let d = dir();
        std::fs::write(d.join("vpn-down.md"), "---\nowner: desk\n---\n# vpn-down\n").unwrap();
        let books = Runbooks::load(Some(&d)).unwrap();
        assert_eq!(
            books.warnings(),
            [format!(
                "{}: front matter line 2: unknown key \"owner\" (only `action` is read)",
                d.join("vpn-down.md").display()
            )]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_site_runbook_overrides_or_adds_and_others_are_ignored() {
        let d = dir();
        std::fs::write(d.join("cpu-high.md"), "# cpu-high at our centre\n\nCall x.").unwrap();
        std::fs::write(d.join("wwan-errors.md"), "# wwan-errors\n").unwrap();
        std::fs::write(d.join("README.txt"), "not a runbook").unwrap();
        std::fs::write(d.join(".draft.md"), "hidden").unwrap();
        std::fs::create_dir(d.join("old.md")).unwrap();
        let books = Runbooks::load(Some(&d)).unwrap();
        let cpu = books.get("cpu-high").unwrap();
        assert_eq!(cpu.source, Source::Site);
        assert_eq!(cpu.title.as_deref(), Some("cpu-high at our centre"));
        assert_eq!(books.get("wwan-errors").unwrap().source, Source::Site);
        assert_eq!(books.get("lost.will").unwrap().source, Source::Builtin);
        assert!(!books.contains("README") && !books.contains(".draft") && !books.contains("old"));
        assert_eq!(books.iter().count(), BUILTIN.len() + 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn site_errors_name_the_file() {
        let d = dir();
        let at = |name: &str| d.join(name).display().to_string();
        let load = || Runbooks::load(Some(&d)).unwrap_err().to_string();

        // Exactly at the limit is fine; one byte over is not.
        std::fs::write(d.join("big.md"), vec![b'a'; MAX_RUNBOOK_BYTES]).unwrap();
        Runbooks::load(Some(&d)).unwrap();
        std::fs::write(d.join("big.md"), vec![b'a'; MAX_RUNBOOK_BYTES + 1]).unwrap();
        assert_eq!(
            load(),
            format!(
                "{}: 65537 bytes, more than the 65536 a runbook may have",
                at("big.md")
            )
        );
        std::fs::remove_file(d.join("big.md")).unwrap();

        std::fs::write(d.join("latin1.md"), b"# caf\xe9\n").unwrap();
        assert_eq!(
            load(),
            format!(
                "{}: is not UTF-8 (invalid byte at offset 5)",
                at("latin1.md")
            )
        );
        std::fs::remove_file(d.join("latin1.md")).unwrap();

        std::fs::write(d.join("cpu high.md"), "# x").unwrap();
        assert!(load().starts_with(&format!(
            "{}: \"cpu high\" is not a rule name",
            at("cpu high.md")
        )));
        std::fs::remove_file(d.join("cpu high.md")).unwrap();

        for i in 0..=MAX_SITE_RUNBOOKS {
            std::fs::write(d.join(format!("r{i}.md")), "# r").unwrap();
        }
        assert_eq!(
            load(),
            format!(
                "{}: 257 runbooks (*.md), more than the 256 a site may have",
                d.display()
            )
        );
        std::fs::remove_dir_all(&d).unwrap();

        let gone = Runbooks::load(Some(&d)).unwrap_err().to_string();
        assert!(
            gone.starts_with(&format!("{}: cannot read the directory: ", d.display())),
            "{gone}"
        );
    }
}
