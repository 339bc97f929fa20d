//! The ordered alternatives a call may be routed to when its target fails.
//!
//! When retrying the same target cannot help (it is down, its breaker is
//! open, its attempts are spent), the call can often still succeed
//! elsewhere: a backup MCP server, another tool with the same effect, a
//! cheaper model. Which alternatives exist, and in what order of
//! preference, is configuration, and configuration mistakes here are
//! quiet: an empty chain silently disables recovery, and a target listed
//! twice makes recovery loop back to a target it has already given up on.
//! So the chain is validated when it is built, and afterwards only answers
//! "what comes after this one?".

use std::collections::HashSet;

/// A chain that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackError {
    /// No targets at all.
    #[error("a fallback chain needs at least one target")]
    Empty,
    /// A target name is empty or only whitespace.
    #[error("fallback target #{0} has an empty name")]
    BlankTarget(usize),
    /// A target is listed more than once.
    #[error("fallback target `{0}` is listed more than once")]
    Duplicate(String),
}

/// Targets in order of preference, the primary first; non-empty, no
/// duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackChain {
    targets: Vec<String>,
}

impl FallbackChain {
    /// A chain trying `targets` in the given order.
    ///
    /// # Errors
    /// [`FallbackError`] when the list is empty, a name is blank, or a name
    /// repeats.
    pub fn new<I, S>(targets: I) -> Result<Self, FallbackError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let targets: Vec<String> = targets.into_iter().map(Into::into).collect();
        if targets.is_empty() {
            return Err(FallbackError::Empty);
        }
        let mut seen = HashSet::with_capacity(targets.len());
        for (index, target) in targets.iter().enumerate() {
            if target.trim().is_empty() {
                return Err(FallbackError::BlankTarget(index));
            }
            if !seen.insert(target.as_str()) {
                return Err(FallbackError::Duplicate(target.clone()));
            }
        }
        Ok(Self { targets })
    }

    /// The preferred target.
    pub fn primary(&self) -> &str {
        // `new` refuses an empty chain, so there is always a first target.
        self.targets.first().map_or("", String::as_str)
    }

    /// All targets, in order.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Whether `target` is in the chain.
    pub fn contains(&self, target: &str) -> bool {
        self.targets.iter().any(|t| t == target)
    }

    /// The alternative to try after `current` fails; `None` at the end of
    /// the chain, or when `current` is not in it (recovery cannot tell
    /// where it is, so it does not guess).
    pub fn after(&self, current: &str) -> Option<&str> {
        self.iter_from(current).nth(1)
    }

    /// `current` and every target after it, in order; empty when `current`
    /// is not in the chain.
    pub fn iter_from<'a>(&'a self, current: &str) -> impl Iterator<Item = &'a str> + 'a {
        let start = self
            .targets
            .iter()
            .position(|t| t == current)
            .unwrap_or(self.targets.len());
        self.targets[start..].iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn chain() -> FallbackChain {
        FallbackChain::new(["claude", "gpt", "local"]).unwrap()
    }

    #[test]
    fn after_walks_the_chain_in_order_and_stops_at_the_end() {
        let c = chain();
        assert_eq!(c.primary(), "claude");
        assert_eq!(c.after("claude"), Some("gpt"));
        assert_eq!(c.after("gpt"), Some("local"));
        assert_eq!(c.after("local"), None);
    }

    #[test]
    fn unknown_current_has_no_alternatives() {
        let c = chain();
        assert_eq!(c.after("mistral"), None);
        assert_eq!(c.iter_from("mistral").count(), 0);
        assert!(!c.contains("mistral"));
        assert!(c.contains("gpt"));
    }

    #[test]
    fn iter_from_includes_current() {
        let c = chain();
        assert_eq!(c.iter_from("gpt").collect::<Vec<_>>(), ["gpt", "local"]);
        assert_eq!(c.iter_from("claude").count(), 3);
    }

    #[test]
    fn rejects_empty_blank_and_duplicate() {
        assert_eq!(
            FallbackChain::new(Vec::<String>::new()),
            Err(FallbackError::Empty)
        );
        assert_eq!(
            FallbackChain::new(["a", " "]),
            Err(FallbackError::BlankTarget(1))
        );
        assert_eq!(
            FallbackChain::new(["a", "b", "a"]),
            Err(FallbackError::Duplicate("a".into()))
        );
        assert_eq!(FallbackChain::new(["solo"]).unwrap().after("solo"), None);
    }
}
