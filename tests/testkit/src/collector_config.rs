//! The test collector's config, written once: [`CollectorToml`] holds the
//! keys every test collector has (an admin token, the broker URL, the feed
//! on `127.0.0.1:0`, a store path, fast ingest ticks) and renders TOML.
//!
//! Contract: sections come out in a fixed order (top level, `[mqtt]`,
//! `[http]`, `[store]`, `[ingest]`, the `[[agency]]` tables, `[signing]`,
//! then [`CollectorToml::extra`]); [`CollectorToml::set`] replaces a key the
//! builder already has, so no rendering holds a key twice unless raw lines
//! ([`CollectorToml::raw`], [`CollectorToml::extra`]) repeat one. Values are
//! TOML as written (`"\"1s\""`, `"4"`); [`CollectorToml::set_str`] quotes.

use std::path::Path;

/// Sections in the order they are rendered.
const SECTIONS: [&str; 4] = ["mqtt", "http", "store", "ingest"];

/// A collector config for a test.
#[derive(Debug, Clone)]
pub struct CollectorToml {
    admin_token: String,
    /// Per section of [`SECTIONS`]: (key, TOML value) and then raw lines.
    keys: [Vec<(String, String)>; 4],
    raw: [String; 4],
    agencies: Vec<String>,
    signing: Option<String>,
    extra: String,
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn section(name: &str) -> usize {
    SECTIONS
        .iter()
        .position(|s| *s == name)
        .unwrap_or_else(|| panic!("no section [{name}] in the builder: use extra()"))
}

impl CollectorToml {
    /// An admin token, `[mqtt] url`, `[http] listen = "127.0.0.1:0"`,
    /// `[store] path`, and `[ingest]` committing every 20 ms and ticking
    /// every 50 ms.
    pub fn new(admin_token: &str, mqtt_url: &str, store: &Path) -> CollectorToml {
        let mut c = CollectorToml::production(admin_token, mqtt_url, store);
        c.set_str("ingest", "commit_interval", "20ms")
            .set_str("ingest", "tick_interval", "50ms");
        c
    }

    /// As [`CollectorToml::new`] with the collector's own `[ingest]`
    /// defaults: for benches that measure it as it ships.
    pub fn production(admin_token: &str, mqtt_url: &str, store: &Path) -> CollectorToml {
        let mut c = CollectorToml {
            admin_token: admin_token.to_owned(),
            keys: Default::default(),
            raw: Default::default(),
            agencies: Vec::new(),
            signing: None,
            extra: String::new(),
        };
        c.set_str("mqtt", "url", mqtt_url)
            .set_str("http", "listen", "127.0.0.1:0")
            .set_str("store", "path", &store.display().to_string());
        c
    }

    /// Sets `key = value` (TOML as written) in `[section]`, replacing it if set.
    pub fn set(&mut self, section_name: &str, key: &str, value: &str) -> &mut Self {
        let keys = &mut self.keys[section(section_name)];
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_owned(),
            None => keys.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    /// As [`CollectorToml::set`], the value a quoted string.
    pub fn set_str(&mut self, section_name: &str, key: &str, value: &str) -> &mut Self {
        self.set(section_name, key, &quote(value))
    }

    /// Raw lines appended inside `[section]`, after its keys.
    pub fn raw(&mut self, section_name: &str, lines: &str) -> &mut Self {
        let raw = &mut self.raw[section(section_name)];
        raw.push_str(lines);
        raw.push('\n');
        self
    }

    /// An `[[agency]]` with its feed token.
    pub fn agency(&mut self, name: &str, token: &str) -> &mut Self {
        self.agency_with(name, token, "")
    }

    /// An `[[agency]]` with its feed token and more keys (raw lines).
    pub fn agency_with(&mut self, name: &str, token: &str, lines: &str) -> &mut Self {
        self.agencies.push(format!(
            "[[agency]]\nname = {}\ntoken = {}\n{lines}",
            quote(name),
            quote(token)
        ));
        self
    }

    /// `[signing]` with the suite's collector key, its file written into `dir`.
    pub fn signing_key_in(&mut self, dir: &Path) -> &mut Self {
        self.signing = Some(crate::collector_signing_toml(dir));
        self
    }

    /// The escape hatch: TOML appended at the end (`[rules]`, `[broker]`, ...).
    pub fn extra(&mut self, toml: &str) -> &mut Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    pub fn render(&self) -> String {
        let mut out = format!("admin_token = {}\n", quote(&self.admin_token));
        for (i, name) in SECTIONS.iter().enumerate() {
            out.push_str(&format!("[{name}]\n"));
            for (k, v) in &self.keys[i] {
                out.push_str(&format!("{k} = {v}\n"));
            }
            out.push_str(&self.raw[i]);
        }
        for a in &self.agencies {
            out.push_str(a);
        }
        if let Some(s) = &self.signing {
            out.push_str(s);
        }
        out.push_str(&self.extra);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_common_keys_and_replaces_a_set_one() {
        let mut c = CollectorToml::new("adm", "mqtt://127.0.0.1:1", Path::new("/tmp/s \"x\""));
        c.set_str("ingest", "tick_interval", "200ms")
            .set("http", "sse_buffer", "4")
            .raw("mqtt", "keep_alive = \"5s\"")
            .agency_with("metro-fire", "tok", "enroll = \"auto\"\n")
            .extra("[rules]");
        let text = c.render();
        assert_eq!(text.matches("tick_interval").count(), 1, "{text}");
        assert!(text.contains("tick_interval = \"200ms\""), "{text}");
        assert!(text.contains("path = \"/tmp/s \\\"x\\\"\""), "{text}");
        assert!(
            text.contains("url = \"mqtt://127.0.0.1:1\"\nkeep_alive = \"5s\"\n[http]"),
            "{text}"
        );
        assert!(text.contains(
            "[[agency]]\nname = \"metro-fire\"\ntoken = \"tok\"\nenroll = \"auto\"\n[rules]"
        ));
        assert!(text.contains("sse_buffer = 4\n"), "{text}");
    }
}
