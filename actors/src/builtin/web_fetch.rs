//! Placeholder for the `web_fetch` module; filled in by its own change.
