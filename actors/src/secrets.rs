//! The secret values hale itself knows, masked by exact value everywhere.
//!
//! Patterns ([`crate::audit::Redactor`]) guess at secrets from their
//! shape; they cannot know that `4f0c…` is the control-plane token or that
//! the value of `OPENAI_API_KEY` is a key. The runtime does know: it read
//! them itself (the token file, each model's `api_key_env`, each MCP
//! server's `env`, `HALE_TOKEN`). [`KnownSecrets`] is that list, shared by
//! every place text leaves hale's hands: the dispatcher's outcomes (so the
//! model, the journal and the events all see the same masked text, and a
//! resumed session reads exactly what the live one did), the model's
//! replies, the audit trail, the event stream, approvals, memory lessons,
//! API errors and logs, and the store's writes as a last line, so that a
//! known value never reaches `hale.db`.
//!
//! Values are added when the runtime starts (and may be added later: a
//! clone sees every value added through any other clone). Matching is one
//! Aho-Corasick pass over the text for every value at once, leftmost
//! longest, so a value that contains another is masked whole.
//!
//! Values shorter than [`MIN_KNOWN_SECRET_LEN`] are ignored: masking every
//! `1234` or `true` in every outcome would mangle ordinary text (and tell
//! a reader which short strings are the secret), while a real credential
//! is never that short.
//!
//! # Invariants
//! - Masking is idempotent: [`REDACTED`] contains no secret of eight
//!   characters or more unless a secret is a substring of the marker,
//!   and such a value is refused by [`KnownSecrets::add`].
//! - A value is also masked in its JSON-escaped form, so a secret holding
//!   a quote or a backslash is caught inside serialised JSON too.

use std::borrow::Cow;
use std::sync::{Arc, PoisonError, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde_json::Value;

use crate::event::Event;
use crate::outcome::ToolOutcome;

/// What replaces a secret (shared with the pattern redactor, so a reader
/// and the file tools' guard look for one marker).
pub const REDACTED: &str = "[REDACTED]";

/// Known values shorter than this (in characters) are not masked.
pub const MIN_KNOWN_SECRET_LEN: usize = 8;

/// Why a value was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAdded {
    /// Shorter than [`MIN_KNOWN_SECRET_LEN`] after trimming.
    #[error("shorter than {MIN_KNOWN_SECRET_LEN} characters")]
    TooShort,
    /// Already known.
    #[error("already known")]
    Duplicate,
    /// A part of the marker itself: masking would never end.
    #[error("part of the redaction marker")]
    PartOfMarker,
}

/// The compiled set: the values and one automaton over them.
#[derive(Debug, Default)]
struct Matcher {
    /// Every pattern searched for (values and their JSON-escaped forms).
    patterns: Vec<String>,
    /// The values as added (trimmed).
    values: Vec<String>,
    automaton: Option<AhoCorasick>,
}

impl Matcher {
    fn build(values: Vec<String>) -> Self {
        let mut patterns: Vec<String> = Vec::with_capacity(values.len());
        for value in &values {
            patterns.push(value.clone());
            let escaped = json_escaped(value);
            if escaped != *value {
                patterns.push(escaped);
            }
        }
        // A set of plain strings always builds; should the library ever
        // refuse one, masking falls back to nothing rather than panic, and
        // the store's own check (`contains_any`) still sees no automaton.
        let automaton = if patterns.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Self {
            patterns,
            values,
            automaton,
        }
    }
}

/// `value` as it appears inside a JSON string (without the quotes).
fn json_escaped(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map_or_else(|| value.to_owned(), ToOwned::to_owned)
}

/// The exact secret values to mask. Cheap to clone (an `Arc` inside);
/// every clone shares the values, including those added later.
#[derive(Clone, Default)]
pub struct KnownSecrets {
    inner: Arc<RwLock<Arc<Matcher>>>,
}

impl std::fmt::Debug for KnownSecrets {
    /// Never prints a value: only how many there are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSecrets")
            .field("values", &self.len())
            .finish()
    }
}

impl PartialEq for KnownSecrets {
    /// The same values, in any order.
    fn eq(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return true;
        }
        let mut a = self.current().values.clone();
        let mut b = other.current().values.clone();
        a.sort();
        b.sort();
        a == b
    }
}

impl Eq for KnownSecrets {}

impl KnownSecrets {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding `values` (those too short are skipped).
    pub fn from_values<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let set = Self::new();
        set.extend(values);
        set
    }

    fn current(&self) -> Arc<Matcher> {
        Arc::clone(&self.inner.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Adds one value (trimmed), for this clone and every other.
    ///
    /// # Errors
    /// [`NotAdded`] says why a value is not masked: too short, already
    /// known, or a part of [`REDACTED`].
    pub fn add(&self, value: &str) -> Result<(), NotAdded> {
        let value = value.trim();
        if value.chars().count() < MIN_KNOWN_SECRET_LEN {
            return Err(NotAdded::TooShort);
        }
        if REDACTED.contains(value) {
            return Err(NotAdded::PartOfMarker);
        }
        let mut slot = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if slot.values.iter().any(|v| v == value) {
            return Err(NotAdded::Duplicate);
        }
        let mut values = slot.values.clone();
        values.push(value.to_owned());
        *slot = Arc::new(Matcher::build(values));
        Ok(())
    }

    /// Adds every value of `values`, skipping those [`add`](Self::add)
    /// refuses; returns how many were added. One rebuild for all.
    pub fn extend<I, S>(&self, values: I) -> usize
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut slot = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let mut all = slot.values.clone();
        let before = all.len();
        for value in values {
            let value = value.as_ref().trim();
            if value.chars().count() >= MIN_KNOWN_SECRET_LEN
                && !REDACTED.contains(value)
                && !all.iter().any(|v| v == value)
            {
                all.push(value.to_owned());
            }
        }
        let added = all.len() - before;
        if added > 0 {
            *slot = Arc::new(Matcher::build(all));
        }
        added
    }

    /// How many values are known.
    pub fn len(&self) -> usize {
        self.current().values.len()
    }

    /// The length in bytes of the longest pattern masked (a value or its
    /// JSON-escaped form); 0 when none is known. A stream that masks
    /// piece by piece holds back this many bytes less one, so a value
    /// split across two pieces is still whole when it is masked.
    pub fn longest(&self) -> usize {
        self.current()
            .patterns
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
    }

    /// Whether no value is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `text` holds a known value.
    pub fn contains_any(&self, text: &str) -> bool {
        self.current()
            .automaton
            .as_ref()
            .is_some_and(|ac| ac.is_match(text))
    }

    /// `text` with every known value replaced by [`REDACTED`]; borrowed
    /// when there was none.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let matcher = self.current();
        let Some(ac) = matcher.automaton.as_ref() else {
            return Cow::Borrowed(text);
        };
        if !ac.is_match(text) {
            return Cow::Borrowed(text);
        }
        let replacements = vec![REDACTED; matcher.patterns.len()];
        Cow::Owned(ac.replace_all(text, &replacements))
    }

    /// Masks `text` in place.
    pub fn mask_string(&self, text: &mut String) {
        if let Cow::Owned(masked) = self.mask(text) {
            *text = masked;
        }
    }

    /// Masks every string in `value` in place (object keys included).
    pub fn mask_value(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        mask_json(value, &mut |s| self.mask_string(s));
    }

    /// Masks an outcome's message, data, hints and unknown fields.
    pub fn mask_outcome(&self, outcome: &mut ToolOutcome) {
        if self.is_empty() {
            return;
        }
        mask_outcome_with(outcome, &mut |s| self.mask_string(s));
    }

    /// Masks an event's message and data.
    pub fn mask_event(&self, event: &mut Event) {
        if self.is_empty() {
            return;
        }
        self.mask_string(&mut event.message);
        self.mask_value(&mut event.data);
    }
}

/// Applies `mask` to every string of `value`, keys included (a key that
/// is a secret is rare, but a map keyed by tokens is not unheard of).
pub(crate) fn mask_json(value: &mut Value, mask: &mut dyn FnMut(&mut String)) {
    match value {
        Value::String(s) => mask(s),
        Value::Array(items) => items.iter_mut().for_each(|v| mask_json(v, mask)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (mut key, mut v) in entries {
                mask(&mut key);
                mask_json(&mut v, mask);
                map.insert(key, v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Applies `mask` to every text an outcome carries.
pub(crate) fn mask_outcome_with(outcome: &mut ToolOutcome, mask: &mut dyn FnMut(&mut String)) {
    mask(&mut outcome.message);
    mask_json(&mut outcome.data, mask);
    for hint in &mut outcome.hints {
        mask(&mut hint.message);
        hint.suggestions.iter_mut().for_each(&mut *mask);
    }
    for value in outcome.extra.values_mut() {
        mask_json(value, mask);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn masks_every_value_by_exact_text_and_longest_first() {
        let secrets = KnownSecrets::from_values(["hunter2hunter2", "hunter2hunter2-and-more"]);
        assert_eq!(secrets.len(), 2);
        assert_eq!(
            secrets.mask("a hunter2hunter2-and-more b hunter2hunter2 c"),
            "a [REDACTED] b [REDACTED] c"
        );
        assert!(matches!(secrets.mask("nothing here"), Cow::Borrowed(_)));
        // Idempotent.
        let once = secrets.mask("x hunter2hunter2").into_owned();
        assert_eq!(secrets.mask(&once), once);
    }

    #[test]
    fn short_duplicate_and_marker_values_are_refused_with_a_reason() {
        let secrets = KnownSecrets::new();
        assert_eq!(secrets.add("abc"), Err(NotAdded::TooShort));
        assert_eq!(secrets.add("  1234567 "), Err(NotAdded::TooShort));
        assert_eq!(secrets.add("REDACTED"), Err(NotAdded::PartOfMarker));
        assert_eq!(secrets.add(" 12345678\n"), Ok(()));
        assert_eq!(secrets.add("12345678"), Err(NotAdded::Duplicate));
        assert_eq!(secrets.mask("pin 12345678."), "pin [REDACTED].");
        assert_eq!(secrets.mask("1234567"), "1234567");
    }

    #[test]
    fn clones_share_values_added_later() {
        let a = KnownSecrets::new();
        let b = a.clone();
        a.add("token-0123456789").unwrap();
        assert_eq!(b.mask("t=token-0123456789"), "t=[REDACTED]");
        assert_eq!(a, b);
        assert!(!format!("{b:?}").contains("token-0123456789"));
    }

    #[test]
    fn json_escaped_forms_are_masked_too() {
        let secrets = KnownSecrets::from_values([r#"pa"ss\word"#]);
        let text = serde_json::to_string(&json!({"v": r#"pa"ss\word"#})).unwrap();
        assert!(!secrets.mask(&text).contains("ss"));
        let mut value = json!({"list": ["x pa\"ss\\word y"], "pa\"ss\\word": 1});
        secrets.mask_value(&mut value);
        assert_eq!(value, json!({"list": ["x [REDACTED] y"], "[REDACTED]": 1}));
    }

    #[test]
    fn outcomes_and_events_are_masked_everywhere() {
        let secrets = KnownSecrets::from_values(["sekrit-value-42"]);
        let mut outcome = ToolOutcome::success(json!({"stdout": "sekrit-value-42\n"}));
        outcome.message = "saw sekrit-value-42".into();
        outcome.hints.push(crate::outcome::Hint {
            kind: crate::outcome::HintKind::TryInstead,
            message: "sekrit-value-42".into(),
            suggestions: vec!["use sekrit-value-42".into()],
        });
        outcome
            .extra
            .insert("more".into(), json!("sekrit-value-42"));
        secrets.mask_outcome(&mut outcome);
        let text = serde_json::to_string(&outcome).unwrap();
        assert!(!text.contains("sekrit-value-42"), "{text}");
        let mut event = Event::new(
            crate::event::Level::Info,
            "x",
            crate::event::EventKind::ToolOutcome,
            "sekrit-value-42",
        )
        .with_data(json!({"a": ["sekrit-value-42"]}));
        secrets.mask_event(&mut event);
        assert!(!serde_json::to_string(&event).unwrap().contains("sekrit"));
    }
}
