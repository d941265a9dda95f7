//! A sandbox's jail: its own unprivileged uid and gid, and a directory that becomes the root of
//! the VM's processes (vmpod-vmm, or QEMU and its vmpod-vhost-user backends), holding only
//! their sockets. The jail is `<state dir>/jail`; the state directory (root's, mode 0700) keeps
//! `cleanup.sh`, the VM's config and the console outside it. `vmpod-jailer` (jailer/) runs
//! the steps; this file chooses what goes in.
//!
//! Uids come from a reserved range, one per live sandbox: a sandbox claims `UID_BASE + n` by
//! creating the symlink `/run/vmpod/uids/<uid>` to its state directory (atomic; the first to
//! create it wins). A claim whose state directory is gone (its owner was killed and the janitor
//! removed the directory) is stale and taken over; a sandbox removes its own when it ends.

use crate::error::{io, SandboxError};
use crate::jail_slots;
use crate::jailer::{Bind, JailSpec};
use crate::paths;
use crate::process::{die_with_parent, inherit_fd};
use crate::vm_cgroup::VmCgroup;
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first uid (and gid) of the range sandboxes take theirs from.
pub const UID_BASE: u32 = 50_000_000;
/// How many sandboxes can live at once.
pub const UID_COUNT: u32 = 65_536;

const CLAIMS: &str = "uids";

/// Descriptors a jailed process may hold: its devices, sockets, threads' eventfds.
const NOFILE: u64 = 4096;
/// Processes and threads of the sandbox's uid: vCPUs, QEMU's and the backends' threads.
const NPROC: u64 = 1024;

/// Whether sandboxes are jailed: as root, unless `VMPOD_JAIL=0` (a switch for diagnosis; only
/// root can make the namespaces and change uid).
pub fn enabled() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::env::var_os("VMPOD_JAIL").is_none_or(|v| v != "0")
}

#[derive(Debug)]
pub struct Jail {
    uid: u32,
    root: PathBuf,
    claim: PathBuf,
    state_dir: PathBuf,
    cgroup: VmCgroup,
}

impl Jail {
    /// Claims a uid for the sandbox of `state_dir` and makes its jail directory and its host
    /// cgroup, whose processes may use `memory_bytes` together.
    pub fn create(state_dir: &Path, memory_bytes: u64) -> Result<Jail, SandboxError> {
        let claims = Path::new(paths::STATE_ROOT).join(CLAIMS);
        std::fs::create_dir_all(&claims).map_err(io(format!("create {}", claims.display())))?;
        let (uid, claim) = claim_uid(&claims, state_dir)?;
        let root = state_dir.join("jail");
        let made = io(format!("create the jail {}", root.display()));
        std::fs::create_dir(&root).map_err(made)?;
        let jail = Jail {
            uid,
            root,
            claim,
            state_dir: state_dir.to_path_buf(),
            cgroup: VmCgroup::create(
                &state_dir.file_name().unwrap_or_default().to_string_lossy(),
                memory_bytes,
                NPROC,
            ),
        };
        // Only the sandbox's own uid enters it (to make its sockets); no other sandbox can.
        std::os::unix::fs::chown(&jail.root, Some(uid), Some(uid))
            .and_then(|()| {
                std::fs::set_permissions(&jail.root, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(io(format!("give {} to uid {uid}", jail.root.display())))?;
        jail_slots::create(state_dir)?;
        Ok(jail)
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host's path of `inside` (an absolute path in the jail).
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        self.root.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// `program args…` run in the jail by `vmpod-jailer`: it sees `binds` and inherits
    /// `keep_fds` (at the same numbers), nothing else of the host; it writes no file larger
    /// than `fsize` bytes. It dies with the caller.
    pub fn command(
        &self,
        program: &Path,
        args: impl IntoIterator<Item = impl Into<OsString>>,
        binds: Vec<Bind>,
        keep_fds: &[RawFd],
        fsize: u64,
        file_caps: bool,
    ) -> Result<Command, SandboxError> {
        let spec = JailSpec {
            root: self.root.clone(),
            uid: self.uid,
            gid: self.uid,
            binds,
            keep_fds: keep_fds.to_vec(),
            nofile: NOFILE,
            fsize,
            nproc: NPROC,
            file_caps,
            cgroups: self.cgroup.procs_files(),
            program: program.to_path_buf(),
            args: args.into_iter().map(Into::into).collect(),
        };
        let mut cmd = Command::new(paths::program("vmpod-jailer")?);
        cmd.args(spec.to_args());
        for fd in keep_fds {
            inherit_fd(&mut cmd, *fd);
        }
        die_with_parent(&mut cmd);
        Ok(cmd)
    }

    /// Makes the host's device node `device` (e.g. /dev/kvm) at the same path in the jail,
    /// the sandbox uid's alone: for a program that opens it by path (QEMU's KVM).
    pub fn device_node(&self, device: &Path) -> Result<(), SandboxError> {
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(device).map_err(io(format!("stat {}", device.display())))?;
        if !meta.file_type().is_char_device() {
            return Err(SandboxError::Invalid(format!(
                "{} is not a character device",
                device.display()
            )));
        }
        let node = self.host_path(device);
        if let Some(dir) = node.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        }
        let path = std::ffi::CString::new(node.as_os_str().as_encoded_bytes())
            .map_err(|_| SandboxError::Invalid(format!("{} holds a NUL", node.display())))?;
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        // SAFETY: a NUL-terminated path and plain integers.
        if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, rdev) } < 0 {
            return Err(io(format!("make {}", node.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        std::os::unix::fs::chown(&node, Some(self.uid), Some(self.uid)).map_err(io(format!(
            "give {} to uid {}",
            node.display(),
            self.uid
        )))
    }

    /// What `cleanup.sh` undoes for the jail: the slot images' binds, the uid's claim.
    pub fn cleanup_command(&self) -> String {
        format!(
            "{}\n{}\nrm -f '{}'",
            jail_slots::cleanup_command(&self.state_dir),
            self.cgroup.cleanup_command(),
            self.claim.display()
        )
    }

    /// Detaches the slot images (before the state directory is removed).
    pub fn teardown(&self) {
        jail_slots::teardown(&self.state_dir);
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        self.teardown();
        let _ = std::fs::remove_file(&self.claim);
    }
}

/// One VM process's start, jailed when the sandbox has a jail: the files it opens by path
/// are bound into the jail, the descriptors it inherits are kept.
pub struct Launch<'a> {
    jail: Option<&'a Jail>,
    binds: Vec<Bind>,
    fds: Vec<RawFd>,
    file_caps: bool,
    fsize: u64,
}

impl<'a> Launch<'a> {
    pub fn new(jail: Option<&'a Jail>) -> Launch<'a> {
        Launch {
            jail,
            binds: Vec::new(),
            fds: Vec::new(),
            file_caps: false,
            fsize: libc::RLIM_INFINITY,
        }
    }

    /// The path the process opens `host` by: `host` itself, or `inside` (absolute) where it
    /// is bound in the jail, read-only unless `writable`.
    pub fn file(&mut self, host: &Path, inside: &str, writable: bool) -> PathBuf {
        if self.jail.is_none() {
            return host.to_path_buf();
        }
        self.binds.push(Bind {
            source: host.to_path_buf(),
            target: inside.into(),
            writable,
        });
        PathBuf::from(inside)
    }

    /// The process inherits `fd` at the same number.
    pub fn fd(&mut self, fd: RawFd) -> &mut Self {
        self.fds.push(fd);
        self
    }

    /// It serves the VM's disks: images inserted later reach it at [`jail_slots::INSIDE`].
    pub fn serves_slots(&mut self) -> &mut Self {
        if let Some(jail) = self.jail {
            self.binds.push(Bind {
                source: jail_slots::host_dir(&jail.state_dir),
                target: jail_slots::INSIDE.into(),
                writable: false,
            });
        }
        self
    }

    /// The descriptor `fd` added last, for the command line that names it.
    pub fn last_fd(&self) -> RawFd {
        self.fds.last().copied().unwrap_or(-1)
    }

    /// It serves the sandbox's shared directory (see [`crate::jailer::FILE_CAPS`]).
    pub fn serves_files(&mut self) -> &mut Self {
        self.file_caps = true;
        self
    }

    /// No file it writes grows past `bytes`.
    pub fn file_size_limit(&mut self, bytes: u64) -> &mut Self {
        self.fsize = bytes;
        self
    }

    pub fn command(
        self,
        program: &Path,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Command, SandboxError> {
        match self.jail {
            Some(jail) => jail.command(
                program,
                args,
                self.binds,
                &self.fds,
                self.fsize,
                self.file_caps,
            ),
            None => {
                let mut cmd = Command::new(program);
                cmd.args(args.into_iter().map(Into::into));
                for fd in &self.fds {
                    inherit_fd(&mut cmd, *fd);
                }
                die_with_parent(&mut cmd);
                Ok(cmd)
            }
        }
    }
}

/// Claims the first free uid from a start that differs per sandbox (its id), so uids are
/// seldom reused soon after a sandbox ends.
fn claim_uid(claims: &Path, state_dir: &Path) -> Result<(u32, PathBuf), SandboxError> {
    let name = state_dir.file_name().unwrap_or_default().to_string_lossy();
    let start = u32::from_str_radix(name.get(..8).unwrap_or("0"), 16).unwrap_or(0) % UID_COUNT;
    for step in 0..UID_COUNT {
        let uid = UID_BASE + (start + step) % UID_COUNT;
        let claim = claims.join(uid.to_string());
        match std::os::unix::fs::symlink(state_dir, &claim) {
            Ok(()) => return Ok((uid, claim)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::read_link(&claim).is_ok_and(|owner| !owner.exists());
                if stale
                    && std::fs::remove_file(&claim).is_ok()
                    && std::os::unix::fs::symlink(state_dir, &claim).is_ok()
                {
                    return Ok((uid, claim));
                }
            }
            Err(e) => return Err(io(format!("claim uid {uid} at {}", claim.display()))(e)),
        }
    }
    Err(SandboxError::Invalid(format!(
        "all {UID_COUNT} sandbox uids from {UID_BASE} are in use"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_claimed_once_while_its_sandbox_lives_and_again_once_it_is_gone() {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let claims = scratch.path().join("uids");
        std::fs::create_dir(&claims).expect("claims dir");
        let first = scratch.path().join("00000001aaaa");
        let second = scratch.path().join("00000001bbbb");
        std::fs::create_dir(&first).expect("first state dir");
        std::fs::create_dir(&second).expect("second state dir");
        let (a, _) = claim_uid(&claims, &first).expect("first claim");
        let (b, _) = claim_uid(&claims, &second).expect("second claim");
        assert_eq!(a, UID_BASE + 1);
        assert_eq!(b, UID_BASE + 2, "a live sandbox's uid is not given twice");
        std::fs::remove_dir(&first).expect("first sandbox ends");
        let third = scratch.path().join("00000001cccc");
        std::fs::create_dir(&third).expect("third state dir");
        let (c, _) = claim_uid(&claims, &third).expect("third claim");
        assert_eq!(c, a, "a stale claim is taken over");
    }
}
