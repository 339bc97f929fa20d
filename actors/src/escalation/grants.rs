//! One-shot permissions a human granted through an approval.
//!
//! A `blocked` outcome means a policy refused a call until a human says
//! yes; the yes must let exactly that call through exactly once, and
//! nothing the model writes may forge it. A grant is therefore keyed by the
//! tool and its exact arguments, lives outside anything the model can
//! reach, and is consumed by the tool's policy check when the approved
//! call arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

/// The grants issued and not yet used. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct ApprovalGrants {
    inner: Arc<Mutex<HashMap<(String, String), u32>>>,
}

impl ApprovalGrants {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets one call of `tool` with exactly `args` through its policy.
    pub fn grant(&self, tool: &str, args: &Value) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *map.entry(key(tool, args)).or_insert(0) += 1;
    }

    /// Uses a grant for this call if there is one.
    pub fn take(&self, tool: &str, args: &Value) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let key = key(tool, args);
        match map.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                map.remove(&key);
                true
            }
            None => false,
        }
    }

    /// Withdraws an unused grant (the approved call never came).
    pub fn revoke(&self, tool: &str, args: &Value) {
        let _ = self.take(tool, args);
    }
}

/// `serde_json`'s maps are ordered by key, so the text of a value is
/// canonical: the same arguments always give the same key.
fn key(tool: &str, args: &Value) -> (String, String) {
    (tool.to_owned(), args.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_grant_lets_exactly_one_identical_call_through() {
        let grants = ApprovalGrants::new();
        let args = json!({"command": "dropdb x", "timeout_ms": 5});
        assert!(!grants.take("exec", &args));
        grants.grant("exec", &args);
        assert!(!grants.take("exec", &json!({"command": "dropdb y"})));
        assert!(!grants.take("write_file", &args));
        // Key order does not matter.
        assert!(grants.take("exec", &json!({"timeout_ms": 5, "command": "dropdb x"})));
        assert!(!grants.take("exec", &args));
    }
}
