//! One-shot permissions a human granted through an approval.
//!
//! A `blocked` outcome means a policy refused a call until a human says
//! yes; the yes must let exactly that call through exactly once, and
//! nothing the model writes may forge it or reuse it. A grant is therefore
//! keyed by the whole [`Gate`] of the runtime approval that was decided:
//! the session, its message, the step, the tool and the digest of the
//! arguments. The tool's policy check builds the same key from the
//! [`ToolContext`] the runtime gave the call, never from the arguments,
//! so an identical call from another session or another step finds no
//! grant. Grants live outside anything the model can reach and are
//! consumed when the approved call arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::escalation::{Gate, args_digest};
use crate::tool::ToolContext;

/// What a grant is keyed by: a [`Gate`].
pub type GrantKey = Gate;

/// The grants issued and not yet used. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct ApprovalGrants {
    inner: Arc<Mutex<HashMap<GrantKey, u32>>>,
}

impl ApprovalGrants {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets the one call `gate` describes through its policy, once.
    pub fn grant(&self, gate: &Gate) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *map.entry(gate.clone()).or_insert(0) += 1;
    }

    /// Uses a grant for `tool` called with `args` by the caller `ctx`
    /// describes, if the human granted exactly that call. A call with no
    /// session, message or step in its context never matches.
    pub fn take(&self, tool: &str, args: &Value, ctx: &ToolContext) -> bool {
        let (Some(session), Some(message), Some(step)) =
            (ctx.session.as_ref(), ctx.message, ctx.call.as_ref())
        else {
            return false;
        };
        let key = Gate {
            session: session.clone(),
            message,
            step: step.clone(),
            tool: tool.to_owned(),
            args_digest: args_digest(args),
        };
        self.take_key(&key)
    }

    /// Withdraws an unused grant (the approved call never came).
    pub fn revoke(&self, gate: &Gate) {
        let _ = self.take_key(gate);
    }

    fn take_key(&self, key: &GrantKey) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                map.remove(key);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_grant_lets_exactly_one_identical_call_of_the_same_step_through() {
        let grants = ApprovalGrants::new();
        let args = json!({"command": "dropdb x", "timeout_ms": 5});
        let ctx = ToolContext::for_step("s1", 3, "3:call-1");
        assert!(!grants.take("exec", &args, &ctx));
        grants.grant(&Gate::new("s1", 3, "3:call-1", "exec", &args));
        assert!(!grants.take("exec", &json!({"command": "dropdb y"}), &ctx));
        assert!(!grants.take("write_file", &args, &ctx));
        // Another session, message or step with the identical call finds
        // nothing.
        assert!(!grants.take("exec", &args, &ToolContext::for_step("s2", 3, "3:call-1")));
        assert!(!grants.take("exec", &args, &ToolContext::for_step("s1", 4, "3:call-1")));
        assert!(!grants.take("exec", &args, &ToolContext::for_step("s1", 3, "3:call-2")));
        assert!(!grants.take("exec", &args, &ToolContext::default()));
        // Key order does not matter.
        assert!(grants.take(
            "exec",
            &json!({"timeout_ms": 5, "command": "dropdb x"}),
            &ctx
        ));
        assert!(!grants.take("exec", &args, &ctx));
    }

    #[test]
    fn a_revoked_grant_lets_nothing_through() {
        let grants = ApprovalGrants::new();
        let args = json!({"command": "dropdb x"});
        let gate = Gate::new("s1", 1, "1:c", "exec", &args);
        grants.grant(&gate);
        grants.revoke(&gate);
        assert!(!grants.take("exec", &args, &ToolContext::for_step("s1", 1, "1:c")));
    }
}
