//! `hale.toml`: any text is a config or an error whose location is inside
//! the text.
#![no_main]

use std::path::Path;

use hale::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::from_str_with_env(text, Some(Path::new("hale.toml")), |_| false)
        && let Some(at) = e.location()
    {
        let lines = text.split('\n').count();
        assert!(
            at.line >= 1 && at.line <= lines && at.column >= 1,
            "{at}: {e}"
        );
    }
});
