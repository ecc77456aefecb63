//! Command-line subcommands that are more than a line in `main.rs`.

pub mod challenge;
pub mod hsm;
