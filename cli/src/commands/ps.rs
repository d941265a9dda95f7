//! `vmpod ps`: the background containers, newest first.

use crate::containers::{all_records, now_unix, Status};
use crate::Failure;

pub fn ps(all: bool) -> Result<i32, Failure> {
    println!(
        "{:<12}  {:<16}  {:<20}  {:<24}  {:<10}  STATUS",
        "CONTAINER ID", "NAME", "IMAGE", "COMMAND", "CREATED"
    );
    for r in all_records() {
        let status = r.effective_status();
        if !all && !matches!(status, Status::Running | Status::Starting) {
            continue;
        }
        let status = match status {
            Status::Starting => "Starting".to_string(),
            Status::Running => format!("Up ({})", r.hypervisor),
            Status::Exited {
                code,
                oom_killed: false,
            } => format!("Exited ({code})"),
            Status::Exited {
                code,
                oom_killed: true,
            } => format!("Exited ({code}) OOMKilled"),
        };
        let mut command = r.command.join(" ");
        if command.len() > 24 {
            command.truncate(21);
            command.push_str("...");
        }
        let age = now_unix().saturating_sub(r.created_unix);
        let created = match age {
            0..=59 => format!("{age}s ago"),
            60..=3599 => format!("{}m ago", age / 60),
            _ => format!("{}h ago", age / 3600),
        };
        println!(
            "{:<12}  {:<16}  {:<20}  {:<24}  {:<10}  {status}",
            r.id, r.name, r.image, command, created
        );
    }
    Ok(0)
}
