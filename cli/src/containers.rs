//! The record store of background containers (`vmpod run -d`): one directory per container
//! under /run/vmpod/containers/<id> holding `record.json` (what `ps` shows, how to reach the
//! agent), `request.json` (the prepared run, read once by the monitor), `stdout.log` and
//! `stderr.log`; and a `.name-<name>` symlink per name, which is how a name is claimed.

use crate::Failure;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use vmpod_sandbox::Endpoint;

pub const RECORDS: &str = "/run/vmpod/containers";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    Starting,
    Running,
    Exited {
        code: i32,
        /// Killed by its cgroup's OOM killer (docker's `OOMKilled`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        oom_killed: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub created_unix: u64,
    pub monitor_pid: i32,
    pub status: Status,
    /// The agent's hybrid vsock socket while the sandbox runs.
    pub vsock: Option<PathBuf>,
    pub hypervisor: String,
    pub remove_on_exit: bool,
    /// What an exec inherits: the container's environment and working directory.
    pub env: Vec<String>,
    pub cwd: String,
    /// Published ports as `ps` shows them (`0.0.0.0:8080->80/tcp`).
    #[serde(default)]
    pub ports: Vec<String>,
}

pub fn dir_of(id: &str) -> PathBuf {
    Path::new(RECORDS).join(id)
}

pub fn name_link(name: &str) -> PathBuf {
    Path::new(RECORDS).join(format!(".name-{name}"))
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), Failure> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Failure::runtime(format!("encode {}: {e}", path.display())))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::runtime(format!("write {}: {e}", path.display())))
}

pub fn read_record(id: &str) -> Result<Record, Failure> {
    let path = dir_of(id).join("record.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| Failure::runtime(format!("read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
}

pub fn monitor_alive(pid: i32) -> bool {
    // The pid could have been reused: only our monitor counts.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("__monitor"))
        .unwrap_or(false)
}

impl Record {
    /// Running per the record and its monitor still there; a monitor killed with -9 leaves a
    /// record that says running, which is shown as exited.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Exited { .. } => self.status.clone(),
            _ if monitor_alive(self.monitor_pid) => self.status.clone(),
            _ => Status::Exited {
                code: 125,
                oom_killed: false,
            },
        }
    }
}

pub fn all_records() -> Vec<Record> {
    let mut records: Vec<Record> = std::fs::read_dir(RECORDS)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| read_record(&e.file_name().to_string_lossy()).ok())
                .collect()
        })
        .unwrap_or_default();
    records.sort_by_key(|r| std::cmp::Reverse(r.created_unix));
    records
}

/// By name, full ID or unique ID prefix.
pub fn find(reference: &str) -> Result<Record, Failure> {
    let records = all_records();
    if let Some(r) = records
        .iter()
        .find(|r| r.name == reference || r.id == reference)
    {
        return Ok(r.clone());
    }
    let matching: Vec<&Record> = records
        .iter()
        .filter(|r| !reference.is_empty() && r.id.starts_with(reference))
        .collect();
    match matching[..] {
        [one] => Ok(one.clone()),
        [] => Err(Failure::runtime(format!("no such container: {reference}"))),
        _ => Err(Failure::runtime(format!(
            "'{reference}' matches {} containers; give more of the ID",
            matching.len()
        ))),
    }
}

pub fn random_id() -> Result<String, Failure> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Failure::runtime(format!("read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes a record and its name.
pub fn forget(record: &Record) {
    let _ = std::fs::remove_file(name_link(&record.name));
    let _ = std::fs::remove_dir_all(dir_of(&record.id));
}

/// Claims `name` for container `id`. The symlink claims it atomically: two runs with one
/// name cannot both get it.
pub fn claim_name(id: &str, name: &str) -> Result<(), Failure> {
    if let Err(e) = std::os::unix::fs::symlink(id, name_link(name)) {
        let owner = std::fs::read_link(name_link(name))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Err(Failure::runtime(
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!("the name '{name}' is in use by container {owner}; remove it with `vmpod rm` or pick another")
            } else {
                format!("claim the name '{name}': {e}")
            },
        ));
    }
    Ok(())
}

/// The container by reference, if it runs, and its agent.
pub fn running(reference: &str) -> Result<(Record, Endpoint), Failure> {
    let record = find(reference)?;
    match (record.effective_status(), &record.vsock) {
        (Status::Running, Some(vsock)) => {
            let endpoint = Endpoint::new(vsock);
            Ok((record, endpoint))
        }
        _ => Err(Failure::runtime(format!(
            "container {reference} is not running"
        ))),
    }
}
