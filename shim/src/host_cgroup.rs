//! The pod's host cgroup. A CRI sandbox names its cgroup (`linux.cgroupsPath`: kubelet's
//! cgroup_parent and the sandbox's id, where runc would put the pause process). The shim joins
//! it before the VM boots, so the VMM and every helper it spawns are charged to the pod, and
//! the node sees the pod's real memory and CPU. When the VM is down the shim moves back and
//! removes the cgroup it made.
//!
//! cgroupfs paths only (`/kubepods/…`); a systemd driver's `slice:prefix:name` is left alone.
//! On a cgroup v1 host every mounted hierarchy is joined, as runc does.

use std::path::{Path, PathBuf};

const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroupsPath '{0}' is not a cgroupfs path (/parent/name)")]
    NotCgroupfs(String),
    #[error("cgroupsPath '{0}' climbs out of the cgroup tree")]
    Climbs(String),
    #[error("read {0}")]
    Read(&'static str, #[source] std::io::Error),
    #[error("create the cgroup {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("move the shim into {0}")]
    Join(PathBuf, #[source] std::io::Error),
}

/// One cgroup hierarchy as mounted: where, and whether it is cgroup v2.
#[derive(Debug, Clone, PartialEq)]
struct Hierarchy {
    mount: PathBuf,
    /// For v1, the hierarchy's controllers as /proc/self/cgroup names them ("cpu,cpuacct",
    /// "name=systemd"); empty for v2.
    controllers: String,
}

/// The cgroup hierarchies in a mountinfo: every v1 one, or the v2 one on a host without v1.
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let options = right.nth(1).unwrap_or_default();
        let mount = PathBuf::from(mount);
        match fstype {
            "cgroup" => {
                let controllers: Vec<&str> = options
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro" | "xattr" | "clone_children"))
                    .filter(|o| !o.starts_with("release_agent="))
                    .collect();
                v1.push(Hierarchy {
                    mount,
                    controllers: controllers.join(","),
                });
            }
            "cgroup2" => v2.push(Hierarchy {
                mount,
                controllers: String::new(),
            }),
            _ => {}
        }
    }
    if v1.is_empty() {
        v2
    } else {
        v1
    }
}

/// Where this process is in `hierarchy`, from /proc/self/cgroup.
fn current_cgroup(self_cgroup: &str, hierarchy: &Hierarchy) -> Option<String> {
    self_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let same = if hierarchy.controllers.is_empty() {
            controllers.is_empty()
        } else {
            let mut a: Vec<&str> = controllers.split(',').collect();
            let mut b: Vec<&str> = hierarchy.controllers.split(',').collect();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        };
        same.then(|| path.to_string())
    })
}

/// The cgroup as a relative path; refuses what is not a plain cgroupfs path.
fn relative(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let Some(rest) = cgroups_path.strip_prefix('/') else {
        return Err(CgroupError::NotCgroupfs(cgroups_path.into()));
    };
    let path = Path::new(rest);
    let plain = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || rest.is_empty() {
        return Err(CgroupError::Climbs(cgroups_path.into()));
    }
    Ok(path.to_path_buf())
}

/// The shim's place in the pod's cgroup, left (and the cgroup removed) on drop.
#[derive(Debug)]
pub struct PodCgroup {
    /// Per hierarchy: the pod's cgroup and the one the shim came from.
    joined: Vec<(PathBuf, PathBuf)>,
}

impl PodCgroup {
    /// Joins `cgroups_path` in every hierarchy, creating it; on failure, leaves what it joined.
    pub fn join(cgroups_path: &str) -> Result<PodCgroup, CgroupError> {
        let relative = relative(cgroups_path)?;
        let mountinfo =
            std::fs::read_to_string(MOUNTINFO).map_err(|e| CgroupError::Read(MOUNTINFO, e))?;
        let self_cgroup =
            std::fs::read_to_string(SELF_CGROUP).map_err(|e| CgroupError::Read(SELF_CGROUP, e))?;
        let mut pod = PodCgroup { joined: Vec::new() };
        for h in hierarchies(&mountinfo) {
            let previous = current_cgroup(&self_cgroup, &h).unwrap_or_else(|| "/".into());
            let back = h.mount.join(previous.trim_start_matches('/'));
            let dir = h.mount.join(&relative);
            std::fs::create_dir_all(&dir).map_err(|e| CgroupError::Create(dir.clone(), e))?;
            inherit_cpuset(&h.mount, &relative).map_err(|e| CgroupError::Create(dir.clone(), e))?;
            move_self(&dir).map_err(|e| CgroupError::Join(dir.clone(), e))?;
            pod.joined.push((dir, back));
        }
        Ok(pod)
    }
}

/// A new v1 cpuset cgroup has no CPUs or memory nodes, and takes no process until it has:
/// each level gets its parent's, as runc gives them.
fn inherit_cpuset(mount: &Path, relative: &Path) -> std::io::Result<()> {
    let mut parent = mount.to_path_buf();
    for part in relative.components() {
        let dir = parent.join(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let Ok(own) = std::fs::read_to_string(dir.join(file)) else {
                continue;
            };
            if own.trim().is_empty() {
                let inherited = std::fs::read_to_string(parent.join(file))?;
                std::fs::write(dir.join(file), inherited.trim())?;
            }
        }
        parent = dir;
    }
    Ok(())
}

fn move_self(cgroup: &Path) -> std::io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for (dir, back) in self.joined.drain(..).rev() {
            if let Err(e) = move_self(&back) {
                log::warn!("move the shim back to {}: {e}", back.display());
            }
            // Empty once the VM and its helpers are gone; kubelet owns the parents.
            for sandbox in sandbox_cgroups(&dir) {
                let _ = std::fs::remove_dir(sandbox);
            }
            if let Err(e) = std::fs::remove_dir(&dir) {
                log::warn!("remove the pod's cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// Removes the pod's cgroup after a shim that died in it, once the VMM and its helpers (killed
/// by PDEATHSIG with the shim) have left it. containerd also runs `delete` while the shim
/// lives (after every disconnect): a cgroup that still holds a shim is left alone, and
/// nothing is ever killed here.
pub fn remove(cgroups_path: &str) {
    let (Ok(relative), Ok(mountinfo)) =
        (relative(cgroups_path), std::fs::read_to_string(MOUNTINFO))
    else {
        return;
    };
    for h in hierarchies(&mountinfo) {
        let dir = h.mount.join(&relative);
        if !dir.is_dir() {
            continue;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // The VM's processes are in the sandbox's own cgroup under the pod's.
            let procs: String = std::iter::once(dir.clone())
                .chain(sandbox_cgroups(&dir))
                .map(|d| std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default())
                .collect();
            let pids: Vec<&str> = procs.lines().collect();
            if pids.is_empty() {
                break;
            }
            let shim_alive = pids.iter().any(|pid| {
                std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
                    .is_ok_and(|c| c.windows(SHIM.len()).any(|w| w == SHIM.as_bytes()))
            });
            if shim_alive || std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for sandbox in sandbox_cgroups(&dir) {
            // Its janitor may have removed it already.
            let _ = std::fs::remove_dir(sandbox);
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            log::warn!("remove the pod's cgroup {}: {e}", dir.display());
        }
    }
}

/// The sandbox cgroups (vmpod-sandbox's `vmpod-<id>`) in a pod's cgroup.
fn sandbox_cgroups(pod: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(pod)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("vmpod-"))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// The shim's binary, as its command line names it.
const SHIM: &str = "containerd-shim-vmpod-v2";

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
31 26 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
32 26 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";

    #[test]
    fn a_v1_host_joins_every_v1_hierarchy_and_knows_where_it_came_from() {
        let found = hierarchies(V1);
        let mounts: Vec<_> = found
            .iter()
            .map(|h| h.mount.display().to_string())
            .collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/memory"
            ]
        );
        let self_cgroup = "12:memory:/user.slice\n3:cpuacct,cpu:/system.slice/containerd.service\n1:name=systemd:/init.scope\n0::/\n";
        assert_eq!(
            current_cgroup(self_cgroup, &found[1]).as_deref(),
            Some("/system.slice/containerd.service")
        );
        assert_eq!(
            current_cgroup(self_cgroup, &found[0]).as_deref(),
            Some("/init.scope")
        );
        let v2 = "27 26 0:25 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let found = hierarchies(v2);
        assert_eq!(found.len(), 1);
        assert_eq!(
            current_cgroup("0::/a/b\n", &found[0]).as_deref(),
            Some("/a/b")
        );
    }

    #[test]
    fn only_plain_cgroupfs_paths_are_taken() {
        assert_eq!(
            relative("/kubepods/burstable/pod1/abc").unwrap(),
            PathBuf::from("kubepods/burstable/pod1/abc")
        );
        assert!(matches!(
            relative("kubepods.slice:cri-containerd:abc"),
            Err(CgroupError::NotCgroupfs(_))
        ));
        for bad in ["/", "/kubepods/../../etc"] {
            assert!(
                matches!(relative(bad), Err(CgroupError::Climbs(_))),
                "{bad}"
            );
        }
    }
}
