//! Secrets out of the audit trail before it is stored.
//!
//! Events carry whatever the failing code had at hand: an HTTP error with
//! its request headers, a command line with an `api_key=`, an MCP server's
//! stderr. The audit trail is kept for weeks, exported, and read back by
//! the agent itself through `read_logs`, so a key that reached it would
//! leak three ways. Redaction happens once, in the audit actor, on every
//! event before it reaches the store: the message and every string inside
//! the data (and any value under a key that names a secret).
//!
//! The rules are deliberately pattern-based (bearer tokens, `Authorization`
//! headers, `key=value` pairs with secret-sounding keys, the shapes of
//! well-known provider keys, passwords in URLs) plus the exact values of
//! the configured secret environment variables: a pattern cannot know that
//! `hunter2` is a password, but the environment can.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder, RegexSet};
use serde_json::Value;

use crate::event::Event;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Environment variables whose values are redacted unless configured
/// otherwise: the usual homes of model-provider and forge credentials.
pub const DEFAULT_SECRET_ENV_VARS: &[&str] = &[
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "MISTRAL_API_KEY",
    "GROQ_API_KEY",
    "OPENROUTER_API_KEY",
    "HF_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HALE_API_TOKEN",
];

/// Secret values shorter than this are not redacted by value: a one- or
/// two-character "secret" would turn every message into confetti.
pub const MIN_SECRET_LEN: usize = 6;

/// Which secrets to redact besides the built-in patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactionConfig {
    /// Environment variables whose values (read when the redactor is
    /// built) are secrets.
    pub secret_env_vars: Vec<String>,
    /// Further literal secrets.
    pub secrets: Vec<String>,
}

impl Default for RedactionConfig {
    /// [`DEFAULT_SECRET_ENV_VARS`] and no literal secrets.
    fn default() -> Self {
        Self {
            secret_env_vars: DEFAULT_SECRET_ENV_VARS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            secrets: Vec::new(),
        }
    }
}

/// Object keys whose scalar values are secrets whatever they look like
/// (compared lower-case with `-` read as `_`).
const SECRET_KEYS: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "api_key",
    "apikey",
    "x_api_key",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "client_secret",
    "secret",
    "secret_key",
    "private_key",
    "password",
    "passwd",
    "token",
    "cookie",
    "set_cookie",
];

/// The built-in patterns and what each match becomes.
const RULES: &[(&str, &str)] = &[
    // `Authorization: Bearer x`, `"authorization": "Basic x"`, `Proxy-Authorization=x`.
    (
        r#"(?i)\b((?:proxy-)?authorization)(["']?\s*[:=]\s*["']?)(?:(?:bearer|basic|token|digest|negotiate)\s+)?[^\s"',;}]+"#,
        "${1}${2}[REDACTED]",
    ),
    // A bearer token anywhere else.
    (
        r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}",
        "${1} [REDACTED]",
    ),
    // `api_key=x`, `"password": "x"`, `token=x` in a URL.
    (
        r#"(?i)\b(api[_-]?key|x-api-key|access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token|client[_-]?secret|secret[_-]?key|private[_-]?key|password|passwd|token|secret)(["']?\s*[:=]\s*["']?)[^\s"'&,;}]+"#,
        "${1}${2}[REDACTED]",
    ),
    // OpenAI / Anthropic style keys (`sk-...`, `sk-ant-...`, `sk-proj-...`).
    (r"\bsk-[A-Za-z0-9_-]{16,}", "[REDACTED]"),
    // GitHub tokens.
    (
        r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
        "[REDACTED]",
    ),
    // AWS access key ids.
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "[REDACTED]"),
    // Slack tokens.
    (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "[REDACTED]"),
    // Google API keys.
    (r"\bAIza[0-9A-Za-z_-]{35}", "[REDACTED]"),
    // A password in a URL: `scheme://user:password@host`.
    (
        r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@",
        "${1}[REDACTED]@",
    ),
];

/// Replaces secrets in events. Cheap to share; building it compiles the
/// patterns and reads the environment once.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Every pattern (secrets first), for a one-pass "anything to do?".
    any: RegexSet,
    /// The literal secrets, longest first so overlapping values go whole.
    secrets: Option<Regex>,
    rules: Vec<(Regex, &'static str)>,
}

impl Redactor {
    /// A redactor for the built-in patterns plus `config`'s secrets; the
    /// environment variables are read now.
    ///
    /// # Errors
    /// The secrets are too large to compile into one pattern.
    pub fn new(config: &RedactionConfig) -> Result<Self, regex::Error> {
        let mut values: Vec<String> = config
            .secret_env_vars
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .chain(config.secrets.iter().cloned())
            .map(|v| v.trim().to_owned())
            .filter(|v| v.chars().count() >= MIN_SECRET_LEN)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        let secrets = if values.is_empty() {
            None
        } else {
            let alternation = values
                .iter()
                .map(|v| regex::escape(v))
                .collect::<Vec<_>>()
                .join("|");
            Some(RegexBuilder::new(&alternation).build()?)
        };
        let rules = RULES
            .iter()
            .map(|(pattern, replacement)| Ok((Regex::new(pattern)?, *replacement)))
            .collect::<Result<Vec<_>, regex::Error>>()?;
        let any = RegexSet::new(
            secrets
                .iter()
                .map(Regex::as_str)
                .chain(rules.iter().map(|(r, _)| r.as_str())),
        )?;
        Ok(Self {
            any,
            secrets,
            rules,
        })
    }

    /// `text` with every secret replaced by [`REDACTED`]; borrowed when
    /// there was none (the common case, checked in one pass).
    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.any.is_match(text) {
            return Cow::Borrowed(text);
        }
        let mut out = Cow::Borrowed(text);
        if let Some(secrets) = &self.secrets
            && let Cow::Owned(replaced) = secrets.replace_all(&out, REDACTED)
        {
            out = Cow::Owned(replaced);
        }
        for (rule, replacement) in &self.rules {
            if let Cow::Owned(replaced) = rule.replace_all(&out, *replacement) {
                out = Cow::Owned(replaced);
            }
        }
        out
    }

    /// Redacts every string in `value` in place, and replaces any scalar
    /// under a secret-named key.
    pub fn redact_value(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Cow::Owned(replaced) = self.redact_str(s) {
                    *s = replaced;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    let scalar = matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
                    if scalar && is_secret_key(key) {
                        *v = Value::String(REDACTED.to_owned());
                    } else {
                        self.redact_value(v);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Redacts an event's message and data in place.
    pub fn redact_event(&self, event: &mut Event) {
        if let Cow::Owned(replaced) = self.redact_str(&event.message) {
            event.message = replaced;
        }
        self.redact_value(&mut event.data);
    }
}

fn is_secret_key(key: &str) -> bool {
    let normal = key.trim().to_ascii_lowercase().replace('-', "_");
    SECRET_KEYS.contains(&normal.as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn redactor(secrets: &[&str]) -> Redactor {
        Redactor::new(&RedactionConfig {
            secret_env_vars: Vec::new(),
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn patterns() {
        let r = redactor(&["hunter2-very-secret"]);
        let cases = [
            (
                "GET /v1 failed: Authorization: Bearer abcdef123456",
                "GET /v1 failed: Authorization: [REDACTED]",
            ),
            (
                "token is bearer abc.def-ghi_jkl",
                "token is bearer [REDACTED]",
            ),
            ("the bearer of bad news", "the bearer of bad news"),
            (
                "key sk-ant-api03-AbCdEfGhIjKlMnOpQrSt rejected",
                "key [REDACTED] rejected",
            ),
            (
                "https://api.example.com/q?api_key=abc123&x=1",
                "https://api.example.com/q?api_key=[REDACTED]&x=1",
            ),
            (r#"{"password": "p4ss"}"#, r#"{"password": "[REDACTED]"}"#),
            ("max_tokens: 512, tokens: 3", "max_tokens: 512, tokens: 3"),
            ("login hunter2-very-secret ok", "login [REDACTED] ok"),
            (
                "postgres://app:s3cr3t@db:5432/x",
                "postgres://app:[REDACTED]@db:5432/x",
            ),
            ("AKIAABCDEFGHIJKLMNOP", "[REDACTED]"),
            ("nothing to see", "nothing to see"),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact_str(input), want, "input: {input}");
        }
        // Redacting twice changes nothing more.
        let once = r
            .redact_str("Authorization: Bearer abcdef123456")
            .into_owned();
        assert_eq!(r.redact_str(&once), once);
    }

    #[test]
    fn short_secrets_are_not_redacted_by_value() {
        let r = redactor(&["abc"]);
        assert_eq!(r.redact_str("abcabc"), "abcabc");
    }
}
