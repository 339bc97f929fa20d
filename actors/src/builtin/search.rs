//! Placeholder for the `search` module; filled in by its own change.
