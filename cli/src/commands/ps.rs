//! `vmpod ps`: the background containers, newest first.

use crate::containers::{all_records, now_unix, Status};
use crate::Failure;

pub fn ps(all: bool) -> Result<i32, Failure> {
    println!(
        "{:<12}  {:<16}  {:<20}  {:<24}  {:<10}  {:<24}  PORTS",
        "CONTAINER ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS"
    );
    for r in all_records() {
        let status = r.effective_status();
        if !all && !matches!(status, Status::Running | Status::Starting) {
            continue;
        }
        // As docker: a stopped container's ports are no longer published.
        let ports = match status {
            Status::Exited { .. } => String::new(),
            _ => r.ports.join(", "),
        };
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
        let line = format!(
            "{:<12}  {:<16}  {:<20}  {:<24}  {:<10}  {status:<24}  {ports}",
            r.id, r.name, r.image, command, created
        );
        println!("{}", line.trim_end());
    }
    Ok(0)
}
