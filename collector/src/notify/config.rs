//! `[agency.webhook]`: one webhook per agency, validated with errors that
//! name the key (`agency[1].webhook.url: ...`).
//!
//! ```toml
//! [[agency]]
//! name = "metro-fire"
//! token = "..."
//! [agency.webhook]
//! url = "https://hooks.metro.example/muster"   # http:// or https://
//! secret = "at least 16 characters"            # HMAC-SHA256 key
//! # ca_file = "/etc/muster/hooks-ca.pem"       # extra trusted CA (https)
//! # timeout = "10s"         # per attempt: connect, send, response head
//! # batch_window = "2s"     # changes within it go out as one message
//! # max_attempts = 8        # then a dead letter
//! # backoff_base = "1s"     # first retry after 0.5-1 x this, doubling
//! # backoff_max = "5m"      # cap of the retry delay
//! # queue = 1000            # notifications waiting; full drops the oldest
//! ```

use std::path::PathBuf;
use std::time::Duration;

use muster_base::value::duration_or;
use serde::Deserialize;

use crate::config::{ConfigError, MIN_TOKEN_LEN, Secret};
use muster_base::backoff::Backoff;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Option<String>,
    pub batch_window: Option<String>,
    pub max_attempts: Option<u32>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub queue: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where it was configured (`agency[0].webhook`), for error messages.
    pub key: String,
    pub url: hyper::Uri,
    pub https: bool,
    pub secret: Secret,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub batch_window: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub queue: usize,
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl RawWebhook {
    /// `key` is where this table is, e.g. `agency[0].webhook`.
    pub fn validate(self, key: &str) -> Result<WebhookConfig, ConfigError> {
        let k = |f: &str| format!("{key}.{f}");
        let dur = |f: &str, v: &Option<String>, d: Duration| -> Result<Duration, ConfigError> {
            Ok(duration_or(&k(f), v.as_deref(), d)?)
        };
        let url_s = self
            .url
            .ok_or_else(|| invalid(k("url"), "is required (http:// or https://)"))?;
        let bad_url = || {
            invalid(
                k("url"),
                format!("{url_s:?} is not an http:// or https:// URL"),
            )
        };
        let url: hyper::Uri = url_s.parse().map_err(|_| bad_url())?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad_url()),
        };
        if url.host().is_none_or(str::is_empty) {
            return Err(bad_url());
        }
        if url_s.contains('@') {
            return Err(invalid(
                k("url"),
                "must not carry credentials: the body is signed with the secret",
            ));
        }
        let secret = self.secret.ok_or_else(|| {
            invalid(
                k("secret"),
                "is required (the key receivers verify the signature with)",
            )
        })?;
        if secret.len() < MIN_TOKEN_LEN {
            return Err(invalid(
                k("secret"),
                format!("must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !https {
                return Err(invalid(k("ca_file"), "is only used with an https:// url"));
            }
            if !ca.is_file() {
                return Err(invalid(
                    k("ca_file"),
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        let timeout = dur("timeout", &self.timeout, Duration::from_secs(10))?;
        if timeout.is_zero() || timeout > Duration::from_secs(120) {
            return Err(invalid(k("timeout"), "must be more than 0 and at most 2m"));
        }
        let batch_window = dur("batch_window", &self.batch_window, Duration::from_secs(2))?;
        if batch_window > Duration::from_secs(60) {
            return Err(invalid(k("batch_window"), "must be at most 1m"));
        }
        let max_attempts = self.max_attempts.unwrap_or(8);
        if !(1..=100).contains(&max_attempts) {
            return Err(invalid(k("max_attempts"), "must be 1 to 100"));
        }
        let base = dur("backoff_base", &self.backoff_base, Duration::from_secs(1))?;
        if base.is_zero() {
            return Err(invalid(k("backoff_base"), "must be more than 0"));
        }
        let max = dur("backoff_max", &self.backoff_max, Duration::from_secs(300))?;
        if max < base {
            return Err(invalid(
                k("backoff_max"),
                "must not be less than backoff_base",
            ));
        }
        let queue = self.queue.unwrap_or(1000);
        if !(1..=100_000).contains(&queue) {
            return Err(invalid(k("queue"), "must be 1 to 100000"));
        }
        Ok(WebhookConfig {
            key: key.to_owned(),
            url,
            https,
            secret: Secret(secret),
            ca_file: self.ca_file,
            timeout,
            batch_window,
            max_attempts,
            backoff: Backoff::new(base, max),
            queue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<WebhookConfig, ConfigError> {
        let text =
            format!("url = \"http://127.0.0.1:9/hook\"\nsecret = \"s3cret-0123456789\"\n{extra}");
        let raw: RawWebhook =
            toml::from_str(&text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        raw.validate("agency[1].webhook")
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert!(!c.https);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.batch_window, Duration::from_secs(2));
        assert_eq!(c.max_attempts, 8);
        assert_eq!(c.backoff.min, Duration::from_secs(1));
        assert_eq!(c.queue, 1000);
        assert_eq!(format!("{:?}", c.secret), "\"***\"");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "timeout = \"3x\"",
                "agency[1].webhook.timeout: \"3x\" is not a duration",
            ),
            ("timeout = \"0s\"", "agency[1].webhook.timeout:"),
            ("batch_window = \"2h\"", "agency[1].webhook.batch_window:"),
            ("max_attempts = 0", "agency[1].webhook.max_attempts:"),
            (
                "backoff_base = \"10s\"\nbackoff_max = \"1s\"",
                "agency[1].webhook.backoff_max:",
            ),
            ("queue = 0", "agency[1].webhook.queue:"),
            (
                "ca_file = \"/etc/passwd\"",
                "agency[1].webhook.ca_file: is only used with an https",
            ),
            ("bogus = 1", "unknown field `bogus`"),
        ];
        for (extra, want) in cases {
            let err = parse(extra).unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: got {err:?}, want {want:?}");
        }
        let raw = |t: &str| -> String {
            let r: RawWebhook = toml::from_str(t).unwrap();
            r.validate("agency[0].webhook").unwrap_err().to_string()
        };
        assert!(
            raw("secret = \"s3cret-0123456789\"").starts_with("agency[0].webhook.url: is required")
        );
        assert!(
            raw("url = \"ftp://x/\"\nsecret = \"s3cret-0123456789\"")
                .starts_with("agency[0].webhook.url:")
        );
        assert!(
            raw("url = \"https://u:p@x/\"\nsecret = \"s3cret-0123456789\"").contains("credentials")
        );
        assert!(
            raw("url = \"https://x/\"\nsecret = \"short\"")
                .starts_with("agency[0].webhook.secret:")
        );
        assert!(raw("url = \"https://x/\"").starts_with("agency[0].webhook.secret: is required"));
    }
}
