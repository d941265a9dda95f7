//! The agent's cgroup v2 figures as containerd's `io.containerd.cgroups.v2.Metrics`, the type
//! `ctr task metrics` and the CRI read.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::MessageField;
use vmpod_protocol::ContainerStats;

pub fn from_stats(s: &ContainerStats) -> Metrics {
    let mut m = Metrics::new();
    m.pids = MessageField::some(PidsStat {
        current: s.pids_current,
        limit: s.pids_limit.unwrap_or(0),
        ..Default::default()
    });
    m.cpu = MessageField::some(CPUStat {
        usage_usec: s.cpu_usage_usec,
        user_usec: s.cpu_user_usec,
        system_usec: s.cpu_system_usec,
        throttled_usec: s.cpu_throttled_usec,
        ..Default::default()
    });
    m.memory = MessageField::some(MemoryStat {
        usage: s.memory_current,
        // containerd reads "unlimited" as the largest value, as cgroupfs's "max".
        usage_limit: s.memory_limit.unwrap_or(u64::MAX),
        ..Default::default()
    });
    m.memory_events = MessageField::some(MemoryEvents {
        oom_kill: s.memory_oom_kills,
        ..Default::default()
    });
    m.io = MessageField::some(IOStat {
        usage: vec![IOEntry {
            rbytes: s.io_read_bytes,
            wbytes: s.io_write_bytes,
            ..Default::default()
        }],
        ..Default::default()
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_land_in_their_fields() {
        let s = ContainerStats {
            cpu_usage_usec: 5,
            memory_current: 1 << 20,
            memory_limit: None,
            memory_oom_kills: 2,
            pids_current: 3,
            io_read_bytes: 7,
            ..Default::default()
        };
        let m = from_stats(&s);
        assert_eq!(m.cpu.usage_usec, 5);
        assert_eq!(m.memory.usage, 1 << 20);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.io.usage[0].rbytes, 7);
    }
}
