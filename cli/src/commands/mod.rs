//! The subcommands on background containers (`vmpod run -d`), and `vmpod info`, one file each.

pub mod exec;
pub mod info;
pub mod kill;
pub mod logs;
pub mod ps;
pub mod rm;
