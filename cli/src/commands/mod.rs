//! The subcommands on background containers (`vmpod run -d`), one file each.

pub mod exec;
pub mod kill;
pub mod logs;
pub mod ps;
pub mod rm;
