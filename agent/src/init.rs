//! PID-1 duties: the guest's filesystems, cgroups and console; powering the VM off.

use nix::mount::{mount, MsFlags};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mount {what} on {target}")]
    Mount {
        what: &'static str,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Sys { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Io { what, source }
}

fn mount_fs(
    what: &'static str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    std::fs::create_dir_all(target).map_err(io(format!("create {target}")))?;
    mount(Some(what), target, Some(what), flags, data).map_err(|source| InitError::Mount {
        what,
        target: target.to_string(),
        source,
    })
}

/// Where the agent's binary stays reachable in the guest's root: a pod's sandbox binds it as
/// its pause process (pod.rs).
pub const AGENT_BINARY: &str = "/vmpod-agent";

/// Leaves the initramfs for a tmpfs root: the kernel refuses pivot_root out of the initial
/// rootfs, and every container's pivot_root needs its caller to be outside it. The agent's
/// binary is the only file: bound read-only into the new root. It stays linked, because the
/// kernel refuses to bind an unlinked file, and that costs nothing: the agent maps all of
/// it (stripped, every byte is in a loaded segment).
fn switch_to_tmpfs_root() -> Result<(), InitError> {
    mount_fs("tmpfs", "/newroot", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    let binary = format!("/newroot{AGENT_BINARY}");
    std::fs::File::create(&binary).map_err(io(format!("create {binary}")))?;
    let bind = |flags| {
        mount(
            Some("/init"),
            binary.as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|source| InitError::Mount {
            what: "the agent's binary",
            target: binary.clone(),
            source,
        })
    };
    bind(MsFlags::MS_BIND)?;
    bind(MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY)?;
    nix::unistd::chdir("/newroot").map_err(sys("chdir /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| {
        InitError::Mount {
            what: "the new root",
            target: "/".into(),
            source,
        }
    })?;
    nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))
}

/// Mounts what the agent and the containers need and writes the boot-timer byte.
pub fn boot() -> Result<(), InitError> {
    switch_to_tmpfs_root()?;
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", nosuid_nodev_noexec, None)?;
    mount_fs("sysfs", "/sys", nosuid_nodev_noexec, None)?;
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mount_fs(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs("cgroup2", "/sys/fs/cgroup", nosuid_nodev_noexec, None)?;
    mount_fs(
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmpfs",
        "/tmp",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    std::fs::create_dir_all("/etc").map_err(io("create /etc"))?;
    // Always overcommit: the container's cgroup limit decides what it may use, as on a host
    // under runc, and not the kernel's guess from a VM sized just above that limit (which
    // refuses one allocation larger than the VM with ENOMEM instead of an OOM kill, 137).
    std::fs::write("/proc/sys/vm/overcommit_memory", "1")
        .map_err(io("set vm.overcommit_memory"))?;
    enable_cgroup_controllers();
    crate::net::loopback_up().map_err(io("bring up lo"))?;
    Ok(())
}

/// Hands every controller the kernel has to the containers' cgroups. A controller the kernel
/// lacks is reported, not fatal: the limits that need it fail when a spec asks for them.
fn enable_cgroup_controllers() {
    let root = Path::new("/sys/fs/cgroup");
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    for controller in available.split_whitespace() {
        if let Err(e) = std::fs::write(
            root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        ) {
            eprintln!("vmpod-agent: cgroup controller {controller} not enabled: {e}");
        }
    }
}

/// vmpod-vmm records the first write of this byte to port 0x3f0 as "guest ready"; elsewhere
/// (QEMU) the port is unassigned and the write is ignored.
pub fn signal_ready() {
    use std::io::{Seek, SeekFrom, Write};
    const BOOT_TIMER_PORT: u64 = 0x3f0;
    const READY: u8 = 123;
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/port")
        .and_then(|mut port| {
            port.seek(SeekFrom::Start(BOOT_TIMER_PORT))?;
            port.write_all(&[READY])
        });
    if let Err(e) = result {
        eprintln!("vmpod-agent: boot-timer byte not written: {e}");
    }
}

/// Ends every process, flushes the disks and resets the VM: the VMM (vmpod-vmm, or QEMU with
/// -no-reboot) exits when its guest resets.
pub fn power_off() -> ! {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGKILL);
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached if the kernel refuses; PID 1 exiting makes it panic, which stops the VM too.
    std::process::exit(1)
}
