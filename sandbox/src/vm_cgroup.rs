//! A jailed sandbox's host cgroup: `vmpod-<id>` under the owner's own cgroup (a pod's
//! cgroup_parent, which the shim joins before the VM boots; where `vmpod run` runs otherwise),
//! holding every process of the VM, with a memory and a pids limit. `vmpod-jailer` moves itself
//! in before it makes the VM's namespaces, so nothing of the VM runs outside it.
//!
//! On a cgroup v1 host (memory and pids are v1 hierarchies, as on a hybrid systemd host) the
//! cgroup is made in each of the two; on a v2 host in the unified tree, where the owner's
//! cgroup delegates memory and pids. A hierarchy that is not mounted, or refuses a new cgroup,
//! is skipped: the VM runs without that limit, as it did before.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Default)]
pub struct VmCgroup {
    /// The cgroups made, one per hierarchy.
    dirs: Vec<PathBuf>,
}

/// Where this process is in the v1 hierarchy of `controller`, or in the unified one (`None`).
fn own_cgroup(self_cgroup: &str, controller: Option<&str>) -> Option<String> {
    self_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match controller {
            Some(name) => controllers.split(',').any(|c| c == name),
            None => controllers.is_empty(),
        };
        wanted.then(|| path.to_string())
    })
}

/// `(hierarchy mount, limit file, value)` for each limit this host can take.
fn places(self_cgroup: &str, memory: u64, pids: u64) -> Vec<(PathBuf, Vec<(&'static str, u64)>)> {
    let v1 = Path::new(ROOT).join("memory").is_dir() || Path::new(ROOT).join("pids").is_dir();
    if v1 {
        [
            ("memory", "memory.limit_in_bytes", memory),
            ("pids", "pids.max", pids),
        ]
        .into_iter()
        .filter_map(|(controller, file, value)| {
            let own = own_cgroup(self_cgroup, Some(controller))?;
            let parent = Path::new(ROOT)
                .join(controller)
                .join(own.trim_start_matches('/'));
            Some((parent, vec![(file, value)]))
        })
        .collect()
    } else {
        own_cgroup(self_cgroup, None)
            .map(|own| Path::new(ROOT).join(own.trim_start_matches('/')))
            .map(|parent| vec![(parent, vec![("memory.max", memory), ("pids.max", pids)])])
            .unwrap_or_default()
    }
}

impl VmCgroup {
    /// Makes the sandbox `id`'s cgroup with these limits wherever the host allows it.
    pub fn create(id: &str, memory_bytes: u64, pids: u64) -> VmCgroup {
        let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut made = VmCgroup::default();
        for (parent, limits) in places(&self_cgroup, memory_bytes, pids) {
            if limits.len() > 1 {
                // v2: the parent hands the controllers down (it fails where the owner's
                // cgroup holds processes itself; the cgroup then has no limits to set).
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
            }
            let dir = parent.join(format!("vmpod-{id}"));
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            for (file, value) in limits {
                let _ = std::fs::write(dir.join(file), value.to_string());
            }
            made.dirs.push(dir);
        }
        made
    }

    /// The files `vmpod-jailer` writes its pid to.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// What `cleanup.sh` runs: each cgroup goes once the VM's processes have left it.
    pub fn cleanup_command(&self) -> String {
        self.dirs
            .iter()
            .map(|d| {
                format!(
                    "for i in 1 2 3 4 5 6 7 8 9 10; do rmdir '{}' 2>/dev/null && break; sleep 0.2; done",
                    d.display()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Removes the cgroups, waiting a little for the VM's last processes to be reaped.
    pub fn remove(&mut self) {
        for dir in self.dirs.drain(..) {
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_is_read_per_v1_controller_and_for_the_unified_tree() {
        let listing = "9:name=systemd:/\n8:pids:/kubepods/pod1\n4:memory:/kubepods/pod1\n\
                       2:cpu,cpuacct:/x\n0::/init.scope\n";
        assert_eq!(
            own_cgroup(listing, Some("memory")).as_deref(),
            Some("/kubepods/pod1")
        );
        assert_eq!(own_cgroup(listing, Some("cpuacct")).as_deref(), Some("/x"));
        assert_eq!(own_cgroup(listing, None).as_deref(), Some("/init.scope"));
        assert_eq!(own_cgroup(listing, Some("blkio")), None);
    }
}
