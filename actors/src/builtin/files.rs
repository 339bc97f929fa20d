//! Placeholder for the `files` module; filled in by its own change.
