//! Placeholder for the `workspace` module; filled in by its own change.
