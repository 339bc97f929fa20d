//! Secrets out of everything hale shows to or stores for people.
//!
//! Events carry whatever the failing code had at hand: an HTTP error with
//! its request headers, a command line with an `api_key=`, an MCP server's
//! stderr, a command that printed `MY_DB_PASSWORD=...`. The audit trail is
//! kept for weeks, exported, streamed on `/v1/events` and read back by the
//! agent itself through `read_logs`, so a key that reached it would leak
//! several ways. The [`Redactor`] is applied to every event before it is
//! stored (the audit actor) and before it is streamed (the event tap), to
//! approvals, MEMORY.md lessons, API errors, logs, and to tool outcomes
//! before the dispatcher hands them back (so the model, the journal and the
//! events agree, and a resumed session sees what the live one saw).
//!
//! Two layers: the exact values hale knows ([`KnownSecrets`], plus the
//! configured secret environment variables and literals: a pattern cannot
//! know that `hunter2` is a password, but the environment can), then the
//! patterns below, which guess from shape.
//!
//! # What the patterns mask
//! - `NAME=value` and `NAME: value` where the last word of `NAME` is a
//!   secret word (`password`, `passwd`, `passphrase`, `secret`, `token`,
//!   `key`, `api_key`, `credentials`), with any prefix joined by `_`, `-`
//!   or `.` (`MY_DB_PASSWORD=`, `api_key=`, `"client_secret": "..."`);
//!   `password`, `passwd`, `secret` and `token` also glued to a prefix
//!   (`dbpassword=`). Not masked: `KEYBOARD=1`, `monkey=banana`,
//!   `max_tokens: 512`, `tokenizer=bpe`, `PWD=/home/x`, `token == x`.
//! - How far a value goes: a quoted value to its closing quote, however
//!   many words (`PASSWORD="correct horse battery staple"`). An unquoted
//!   value that starts its line (`.env` files, `export X=...`, YAML's
//!   `password: a b c`) runs to the end of the line, because that is where
//!   dotenv and YAML end it; an unquoted value inside a line (a log line,
//!   a URL, a command) ends at whitespace, `&`, `,`, `;` or `}`, so
//!   `password=x user=bob` keeps `user=bob`.
//! - `Authorization:` headers, and `Bearer` / `Basic` credentials that
//!   look like one (eight characters or more with a digit, a symbol or
//!   mixed case: "the basic configuration" stays).
//! - `user:password@` in URLs (the user is kept).
//! - Provider key shapes: `sk-` (OpenAI, `sk-ant-`, `sk-proj-`), `ghp_`,
//!   `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`, `glpat-`, `hf_`,
//!   `xox[abposr]-`, `AKIA`/`ASIA` access key ids, `AIza` Google keys.
//! - JWTs (`eyJ...`.`...`.`...`) and PEM private-key blocks, from `BEGIN`
//!   to `END` across lines (an unterminated block: to the end of the text).
//! - In JSON, any scalar under a key named like a secret (`password`,
//!   `db_password`, `api_key`, `authorization`, `cookie`, ...).

use std::borrow::Cow;

use regex::{Captures, Regex, RegexSet};
use serde_json::Value;

use crate::event::Event;
use crate::outcome::ToolOutcome;
use crate::secrets::{KnownSecrets, MIN_KNOWN_SECRET_LEN, mask_json, mask_outcome_with};

/// What replaces a secret.
pub const REDACTED: &str = crate::secrets::REDACTED;

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
    "HALE_TOKEN",
];

/// Secret values shorter than this are not redacted by value: a one- or
/// two-character "secret" would turn every message into confetti.
pub const MIN_SECRET_LEN: usize = MIN_KNOWN_SECRET_LEN;

/// Which secrets to redact besides the built-in patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactionConfig {
    /// Environment variables whose values (read when the redactor is
    /// built) are secrets.
    pub secret_env_vars: Vec<String>,
    /// Further literal secrets.
    pub secrets: Vec<String>,
    /// The values the runtime knows (token, model keys, MCP `env`),
    /// shared: values added after the redactor is built are masked too.
    pub known: KnownSecrets,
}

impl Default for RedactionConfig {
    /// [`DEFAULT_SECRET_ENV_VARS`], no literal secrets, no known values.
    fn default() -> Self {
        Self {
            secret_env_vars: DEFAULT_SECRET_ENV_VARS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            secrets: Vec::new(),
            known: KnownSecrets::new(),
        }
    }
}

/// Object keys whose scalar values are secrets whatever they look like
/// (compared lower-case with `-` read as `_`).
const SECRET_KEYS: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "apikey",
    "x_api_key",
    "cookie",
    "set_cookie",
    "credentials",
];

/// Key suffixes (after `_` or alone) whose scalar values are secrets.
const SECRET_KEY_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "secret_key",
    "private_key",
    "access_key",
];

/// The secret words that end a `NAME` before `=` (see the module docs).
const NAME_EQ: &str = r"(?:(?:[a-z0-9]+[_.-])*(?:[a-z0-9]*(?:password|passwd|passphrase|secret|token)|api[_-]?key|apikey|key|credentials?))";

/// The same before `:`, where a bare `key` is too common (`"key": "id"`)
/// to mean a secret; `api_key:` and `ssh_key:` still do.
const NAME_COLON: &str = r"(?:(?:[a-z0-9]+[_.-])*(?:[a-z0-9]*(?:password|passwd|passphrase|secret|token)|apikey|credentials?)|(?:[a-z0-9]+[_.-])+key)";

/// A value: quoted to its closing quote, or one unquoted word.
const QUOTED: &str = r#""(?:[^"\\\n]|\\.)*"|'[^'\n]*'"#;

/// How a rule's match is rewritten.
#[derive(Debug, Clone, Copy)]
enum Rewrite {
    /// A `regex` replacement template.
    Template(&'static str),
    /// Group 1 kept, group 2 (the value) masked, keeping its quotes.
    Value,
    /// Group 1 kept, group 2 masked only if it looks like a credential.
    Credential,
}

/// The built-in patterns and what each match becomes, in the order they
/// are applied.
fn rules() -> Vec<(String, Rewrite)> {
    vec![
        // PEM private keys, across lines; an unterminated block to the end.
        (
            r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\z)".to_owned(),
            Rewrite::Template(REDACTED),
        ),
        // `Authorization: Bearer x`, `"authorization": "Basic x"`, `Proxy-Authorization=x`.
        (
            r#"(?i)\b((?:proxy-)?authorization)(["']?\s*[:=]\s*["']?)(?:(?:bearer|basic|token|digest|negotiate)\s+)?[^\s"',;}]+"#.to_owned(),
            Rewrite::Template("${1}${2}[REDACTED]"),
        ),
        // A line that is an assignment (`.env`, `export X=`, YAML): the
        // value to the end of the line, or a quoted value whole.
        (
            format!(
                r#"(?im)^([ \t]*(?:export[ \t]+|-[ \t]+)?(?:["']?{NAME_EQ}["']?[ \t]*=|["']?{NAME_COLON}["']?[ \t]*:[ \t])[ \t]*)({QUOTED}|[^\s"'{{\[|>=][^\r\n]*)"#
            ),
            Rewrite::Value,
        ),
        // `"password": "x"` anywhere (JSON).
        (
            format!(r#"(?i)(["']{NAME_COLON}["'][ \t]*:[ \t]*)({QUOTED}|[^\s,}}\]"']+)"#),
            Rewrite::Value,
        ),
        // `NAME=value` / `NAME: value` inside a line.
        (
            format!(
                r#"(?i)(\b(?:{NAME_EQ}[ \t]*=|{NAME_COLON}[ \t]*:[ \t])[ \t]*)({QUOTED}|[^\s"'&,;}}=\[][^\s"'&,;}}]*)"#
            ),
            Rewrite::Value,
        ),
        // Bearer and basic credentials anywhere else.
        (
            r"(?i)(\b(?:bearer|basic)\s+)([A-Za-z0-9._~+/=-]{8,})".to_owned(),
            Rewrite::Credential,
        ),
        // A password in a URL: `scheme://user:password@host`.
        (
            r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@".to_owned(),
            Rewrite::Template("${1}[REDACTED]@"),
        ),
        // OpenAI / Anthropic style keys (`sk-...`, `sk-ant-...`, `sk-proj-...`).
        (r"\bsk-[A-Za-z0-9_-]{16,}".to_owned(), Rewrite::Template(REDACTED)),
        // GitHub and GitLab tokens.
        (
            r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,})".to_owned(),
            Rewrite::Template(REDACTED),
        ),
        // Hugging Face tokens.
        (r"\bhf_[A-Za-z0-9]{20,}".to_owned(), Rewrite::Template(REDACTED)),
        // AWS access key ids.
        (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b".to_owned(), Rewrite::Template(REDACTED)),
        // Slack tokens.
        (r"\bxox[abposr]-[A-Za-z0-9-]{10,}".to_owned(), Rewrite::Template(REDACTED)),
        // Google API keys.
        (r"\bAIza[0-9A-Za-z_-]{35}".to_owned(), Rewrite::Template(REDACTED)),
        // JWTs: header.payload.signature, the header base64url JSON.
        (
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*".to_owned(),
            Rewrite::Template(REDACTED),
        ),
    ]
}

/// Whether a word after `Bearer`/`Basic` is a credential rather than
/// prose: a digit, a symbol, or upper case after the first letter.
fn looks_like_credential(word: &str) -> bool {
    word.chars().skip(1).any(|c| !c.is_ascii_lowercase())
}

/// A masked value, keeping the quotes it had.
fn masked_value(value: &str) -> String {
    match value.chars().next() {
        Some(q @ ('"' | '\'')) if value.len() >= 2 && value.ends_with(q) => {
            format!("{q}{REDACTED}{q}")
        }
        _ => REDACTED.to_owned(),
    }
}

/// Replaces secrets in text, JSON, events and outcomes. Cheap to share;
/// building it compiles the patterns and reads the environment once.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Every pattern, for a one-pass "anything to do?".
    any: RegexSet,
    /// The runtime's known values (shared, may grow).
    known: KnownSecrets,
    /// The configured environment variables' values and literals.
    literals: KnownSecrets,
    rules: Vec<(Regex, Rewrite)>,
}

impl Redactor {
    /// A redactor for the built-in patterns plus `config`'s secrets; the
    /// environment variables are read now.
    ///
    /// # Errors
    /// A pattern does not compile (a bug caught by the unit tests).
    pub fn new(config: &RedactionConfig) -> Result<Self, regex::Error> {
        let literals = KnownSecrets::new();
        literals.extend(
            config
                .secret_env_vars
                .iter()
                .filter_map(|name| std::env::var(name).ok())
                .chain(config.secrets.iter().cloned()),
        );
        let rules = rules()
            .into_iter()
            .map(|(pattern, rewrite)| Ok((Regex::new(&pattern)?, rewrite)))
            .collect::<Result<Vec<_>, regex::Error>>()?;
        let any = RegexSet::new(rules.iter().map(|(r, _)| r.as_str()))?;
        Ok(Self {
            any,
            known: config.known.clone(),
            literals,
            rules,
        })
    }

    /// A redactor for the patterns and `known` only (no environment read).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_known(known: KnownSecrets) -> Result<Self, regex::Error> {
        Self::new(&RedactionConfig {
            secret_env_vars: Vec::new(),
            secrets: Vec::new(),
            known,
        })
    }

    /// The runtime's known values this redactor masks.
    pub fn known(&self) -> &KnownSecrets {
        &self.known
    }

    /// The longest exact value (known or configured) this redactor masks,
    /// in bytes; see [`KnownSecrets::longest`].
    pub fn longest_known(&self) -> usize {
        self.known.longest().max(self.literals.longest())
    }

    /// `text` with every secret replaced by [`REDACTED`]; borrowed when
    /// there was none (the common case, checked in one pass per layer).
    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for known in [&self.known, &self.literals] {
            if let Cow::Owned(masked) = known.mask(&out) {
                out = Cow::Owned(masked);
            }
        }
        if !self.any.is_match(&out) {
            return out;
        }
        for (rule, rewrite) in &self.rules {
            let replaced = match rewrite {
                Rewrite::Template(template) => rule.replace_all(&out, *template),
                Rewrite::Value => rule.replace_all(&out, |caps: &Captures<'_>| {
                    format!("{}{}", &caps[1], masked_value(&caps[2]))
                }),
                Rewrite::Credential => rule.replace_all(&out, |caps: &Captures<'_>| {
                    if looks_like_credential(&caps[2]) {
                        format!("{}{REDACTED}", &caps[1])
                    } else {
                        caps[0].to_owned()
                    }
                }),
            };
            if let Cow::Owned(replaced) = replaced {
                out = Cow::Owned(replaced);
            }
        }
        out
    }

    /// Redacts `text` in place.
    pub fn redact_string(&self, text: &mut String) {
        if let Cow::Owned(replaced) = self.redact_str(text) {
            *text = replaced;
        }
    }

    /// Redacts every string in `value` in place, and replaces any scalar
    /// under a secret-named key.
    pub fn redact_value(&self, value: &mut Value) {
        match value {
            Value::String(s) => self.redact_string(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (mut key, mut v) in entries {
                    let scalar = matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
                    if scalar && is_secret_key(&key) {
                        v = Value::String(REDACTED.to_owned());
                    } else {
                        self.redact_value(&mut v);
                    }
                    self.redact_string(&mut key);
                    map.insert(key, v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Redacts an event's message and data in place.
    pub fn redact_event(&self, event: &mut Event) {
        self.redact_string(&mut event.message);
        self.redact_value(&mut event.data);
    }

    /// Redacts every text an outcome carries (message, data, hints,
    /// unknown fields).
    pub fn redact_outcome(&self, outcome: &mut ToolOutcome) {
        mask_outcome_with(outcome, &mut |s| self.redact_string(s));
        // Secret-named keys inside the payload, as for events.
        self.redact_value(&mut outcome.data);
        for value in outcome.extra.values_mut() {
            self.redact_value(value);
        }
    }

    /// Redacts every string of `value` by text only (no key rule): for
    /// JSON whose keys are not the speaker's (a tool's arguments).
    pub fn redact_strings(&self, value: &mut Value) {
        mask_json(value, &mut |s| self.redact_string(s));
    }
}

fn is_secret_key(key: &str) -> bool {
    let normal = key.trim().to_ascii_lowercase().replace(['-', '.'], "_");
    SECRET_KEYS.contains(&normal.as_str())
        || SECRET_KEY_WORDS.iter().any(|word| {
            normal == *word
                || normal
                    .strip_suffix(word)
                    .is_some_and(|prefix| prefix.ends_with('_'))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn redactor(secrets: &[&str]) -> Redactor {
        Redactor::new(&RedactionConfig {
            secret_env_vars: Vec::new(),
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            known: KnownSecrets::new(),
        })
        .unwrap()
    }

    /// (input, expected) for every rule, and for text that must stay.
    const TABLE: &[(&str, &str)] = &[
        // Headers, bearer and basic.
        (
            "GET /v1 failed: Authorization: Bearer abcdef123456",
            "GET /v1 failed: Authorization: [REDACTED]",
        ),
        (
            "token is bearer abc.def-ghi_jkl",
            "token is bearer [REDACTED]",
        ),
        (
            "curl -H 'X: Basic dXNlcjpwYXNz'",
            "curl -H 'X: Basic [REDACTED]'",
        ),
        ("the bearer of bad news", "the bearer of bad news"),
        (
            "the basic configuration works",
            "the basic configuration works",
        ),
        // Provider key shapes.
        (
            "key sk-ant-api03-AbCdEfGhIjKlMnOpQrSt rejected",
            "key [REDACTED] rejected",
        ),
        ("sk-proj-0123456789abcdefXYZ", "[REDACTED]"),
        ("ghp_0123456789abcdefghijABCDEFGHIJ", "[REDACTED]"),
        ("github_pat_11ABCDEFG0123456789_abcdefghij", "[REDACTED]"),
        ("glpat-abcdefghij0123456789", "[REDACTED]"),
        ("hf_abcdefghijklmnopqrstuvwxyz012345", "[REDACTED]"),
        ("xoxb-1234567890-abcdefghij", "[REDACTED]"),
        ("AKIAABCDEFGHIJKLMNOP", "[REDACTED]"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end",
            "jwt [REDACTED] end",
        ),
        ("sketchy-but-fine", "sketchy-but-fine"),
        // Assignments: the `_` prefix, case, `: ` forms, quotes.
        ("MY_DB_PASSWORD=hunter2hunter2", "MY_DB_PASSWORD=[REDACTED]"),
        (
            "run: MY_DB_PASSWORD=hunter2 ./x",
            "run: MY_DB_PASSWORD=[REDACTED] ./x",
        ),
        (
            "export GITHUB_TOKEN=abc123",
            "export GITHUB_TOKEN=[REDACTED]",
        ),
        (
            "AWS_SECRET_ACCESS_KEY=abc/def+ghi",
            "AWS_SECRET_ACCESS_KEY=[REDACTED]",
        ),
        ("KEY=abcdef", "KEY=[REDACTED]"),
        ("SECRET=s3cr3t", "SECRET=[REDACTED]"),
        ("dbpassword=xyz", "dbpassword=[REDACTED]"),
        (
            "https://api.example.com/q?api_key=abc123&x=1",
            "https://api.example.com/q?api_key=[REDACTED]&x=1",
        ),
        (r#"{"password": "p4ss"}"#, r#"{"password": "[REDACTED]"}"#),
        (
            r#"{"db_password":"a b c","user":"bob"}"#,
            r#"{"db_password":"[REDACTED]","user":"bob"}"#,
        ),
        ("client_secret: abc def", "client_secret: [REDACTED]"),
        ("  api_key: 'x y z'", "  api_key: '[REDACTED]'"),
        (
            r#"PASSWORD="correct horse battery staple""#,
            r#"PASSWORD="[REDACTED]""#,
        ),
        (
            "PASSWORD=correct horse battery staple",
            "PASSWORD=[REDACTED]",
        ),
        (
            "login failed password=hunter2 user=bob",
            "login failed password=[REDACTED] user=bob",
        ),
        ("a\nTOKEN=t0k3n\nb", "a\nTOKEN=[REDACTED]\nb"),
        // Things that must stay.
        ("max_tokens: 512, tokens: 3", "max_tokens: 512, tokens: 3"),
        ("KEYBOARD=1", "KEYBOARD=1"),
        ("monkey=banana", "monkey=banana"),
        ("tokenizer=bpe", "tokenizer=bpe"),
        ("PWD=/home/x", "PWD=/home/x"),
        ("if token == expected {", "if token == expected {"),
        (r#"{"key": "user_id"}"#, r#"{"key": "user_id"}"#),
        (
            "api_key_env = \"OPENAI_API_KEY\"",
            "api_key_env = \"OPENAI_API_KEY\"",
        ),
        ("nothing to see", "nothing to see"),
        // URLs.
        (
            "postgres://app:s3cr3t@db:5432/x",
            "postgres://app:[REDACTED]@db:5432/x",
        ),
        ("https://example.com/a@b", "https://example.com/a@b"),
        // Literal secrets by value.
        ("login hunter2-very-secret ok", "login [REDACTED] ok"),
    ];

    #[test]
    fn patterns() {
        let r = redactor(&["hunter2-very-secret"]);
        for (input, want) in TABLE {
            assert_eq!(r.redact_str(input), *want, "input: {input}");
            // Redacting twice changes nothing more.
            let once = r.redact_str(input).into_owned();
            assert_eq!(r.redact_str(&once), once, "twice: {input}");
        }
    }

    #[test]
    fn pem_private_key_blocks_are_masked_across_lines() {
        let r = redactor(&[]);
        let text = "before\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAbCd==\n-----END RSA PRIVATE KEY-----\nafter";
        assert_eq!(r.redact_str(text), "before\n[REDACTED]\nafter");
        let cut = "x -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXkt\nAAAA";
        assert_eq!(r.redact_str(cut), "x [REDACTED]");
        let public = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----";
        assert_eq!(r.redact_str(public), public);
    }

    #[test]
    fn known_values_are_shared_and_masked_first() {
        let known = KnownSecrets::new();
        let r = Redactor::with_known(known.clone()).unwrap();
        assert_eq!(r.redact_str("tok 0123456789abcdef"), "tok 0123456789abcdef");
        known.add("0123456789abcdef").unwrap();
        assert_eq!(r.redact_str("tok 0123456789abcdef"), "tok [REDACTED]");
    }

    #[test]
    fn secret_named_json_keys_are_masked() {
        let r = redactor(&[]);
        let mut value = serde_json::json!({
            "db_password": 1234,
            "token": "x",
            "max_tokens": 5,
            "key": "id",
            "nested": {"api-key": "y", "MY_SECRET": true},
        });
        r.redact_value(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "db_password": "[REDACTED]",
                "token": "[REDACTED]",
                "max_tokens": 5,
                "key": "id",
                "nested": {"api-key": "[REDACTED]", "MY_SECRET": "[REDACTED]"},
            })
        );
    }

    #[test]
    fn short_secrets_are_not_redacted_by_value() {
        let r = redactor(&["abc"]);
        assert_eq!(r.redact_str("abcabc"), "abcabc");
    }
}
