//! A container's cgroup v2 figures (Stats) and limit changes (UpdateResources), read and
//! written as files: the layout is the kernel's interface.

use libcontainer::oci_spec::runtime::LinuxResources;
use std::path::Path;
use vmpod_protocol::ContainerStats;

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// "key value" lines, as in cpu.stat and memory.events.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// How many OOM kills the kernel did in this cgroup so far.
pub fn oom_kills(dir: &Path) -> u64 {
    keyed(&read(dir, "memory.events"), "oom_kill")
}

pub fn stats(dir: &Path) -> ContainerStats {
    let cpu = read(dir, "cpu.stat");
    let (mut io_read, mut io_write) = (0, 0);
    for line in read(dir, "io.stat").lines() {
        for field in line.split_whitespace().skip(1) {
            match field.split_once('=') {
                Some(("rbytes", v)) => io_read += v.parse::<u64>().unwrap_or(0),
                Some(("wbytes", v)) => io_write += v.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    ContainerStats {
        cpu_usage_usec: keyed(&cpu, "usage_usec"),
        cpu_user_usec: keyed(&cpu, "user_usec"),
        cpu_system_usec: keyed(&cpu, "system_usec"),
        cpu_throttled_usec: keyed(&cpu, "throttled_usec"),
        memory_current: limit(&read(dir, "memory.current")).unwrap_or(0),
        memory_limit: limit(&read(dir, "memory.max")),
        memory_oom_kills: oom_kills(dir),
        pids_current: limit(&read(dir, "pids.current")).unwrap_or(0),
        pids_limit: limit(&read(dir, "pids.max")),
        io_read_bytes: io_read,
        io_write_bytes: io_write,
        pids: read(dir, "cgroup.procs")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("write {file} = {value}")]
pub struct UpdateError {
    file: String,
    value: String,
    #[source]
    source: std::io::Error,
}

/// The cgroup v2 files and values for the OCI resources given (memory, CPU, pids); runc's
/// conversions (shares → weight).
pub fn resource_files(r: &LinuxResources) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    let max = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if let Some(memory) = r.memory() {
        if let Some(limit) = memory.limit() {
            files.push(("memory.max", max(limit)));
        }
        if let Some(reservation) = memory.reservation() {
            files.push(("memory.low", max(reservation)));
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(shares) = cpu.shares() {
            if shares > 0 {
                let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
                files.push(("cpu.weight", weight.to_string()));
            }
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let quota = cpu.quota().map(max).unwrap_or_else(|| "max".into());
            let period = cpu.period().unwrap_or(100_000);
            files.push(("cpu.max", format!("{quota} {period}")));
        }
    }
    if let Some(pids) = r.pids() {
        files.push(("pids.max", max(pids.limit())));
    }
    files
}

pub fn update(dir: &Path, r: &LinuxResources) -> Result<(), UpdateError> {
    for (file, value) in resource_files(r) {
        std::fs::write(dir.join(file), &value).map_err(|source| UpdateError {
            file: file.to_string(),
            value,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    #[test]
    fn figures_are_read_from_the_cgroup_files() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 500\nuser_usec 300\nsystem_usec 200\n",
        )
        .unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.events"), "low 0\noom 2\noom_kill 1\n").unwrap();
        std::fs::write(dir.join("pids.max"), "64\n").unwrap();
        std::fs::write(
            dir.join("io.stat"),
            "254:0 rbytes=10 wbytes=20 rios=1\n254:16 rbytes=5 wbytes=0\n",
        )
        .unwrap();
        let s = stats(dir);
        assert_eq!(
            (s.cpu_usage_usec, s.cpu_user_usec, s.cpu_system_usec),
            (500, 300, 200)
        );
        assert_eq!(
            (s.memory_current, s.memory_limit, s.memory_oom_kills),
            (4096, None, 1)
        );
        assert_eq!((s.pids_current, s.pids_limit), (0, Some(64)));
        assert_eq!((s.io_read_bytes, s.io_write_bytes), (15, 20));
    }

    #[test]
    fn oci_resources_become_cgroup_v2_values() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(32i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1i64).build().unwrap())
            .build()
            .unwrap();
        assert_eq!(
            resource_files(&r),
            vec![
                ("memory.max", (32u64 << 20).to_string()),
                ("cpu.weight", "39".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("pids.max", "max".to_string()),
            ]
        );
    }
}
