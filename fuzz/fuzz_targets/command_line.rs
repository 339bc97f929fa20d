//! The exec approval rules' command-line reader: any line is reduced to
//! simple commands or refused, and each reduced command has one match
//! text plus one per wrapped command.
#![no_main]

use hale_actors::builtin::command_line::simple_commands;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    if let Ok(commands) = simple_commands(line) {
        for command in &commands {
            assert_eq!(command.match_texts().len(), 1 + command.wrapped.len());
        }
    }
});
