//! Placeholder for the `exec` module; filled in by its own change.
