//! Containers from OCI runtime specs, through youki's libcontainer: create, start, exec,
//! signal, pause, resume, update, remove. The processes' stdio fds come from the caller;
//! the caller (the event loop) reaps the processes, which are the agent's children.

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as Lc;
use libcontainer::oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceType, LinuxSeccomp, Process, Spec,
};
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where libcontainer keeps its per-container state.
pub const STATE_ROOT: &str = "/run/vmpod/state";
/// Bundles (config.json, exec process files, console sockets) and rootfs mounts.
pub const CONTAINERS_DIR: &str = "/run/vmpod/containers";
/// Every container's cgroup lives below this one.
pub const CGROUP_PARENT: &str = "/vmpod";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "container id '{0}' must be 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    BadId(String),
    #[error("the spec has no process to run")]
    NoProcess,
    #[error("{0}")]
    Runtime(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn runtime(
    what: &str,
) -> impl FnOnce(libcontainer::error::LibcontainerError) -> ContainerError + '_ {
    move |e| ContainerError::Runtime(format!("{what}: {}", crate::chain(&e)))
}

pub fn validate_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::BadId(id.to_string()))
    }
}

/// Applies the container's seccomp profile to exec'd processes too: libcontainer builds a
/// tenant's spec without it, which would let `exec` escape the profile.
#[derive(Clone)]
struct SeccompExecutor {
    profile: Option<LinuxSeccomp>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let has_own = spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .is_some();
        if let (Some(profile), false) = (&self.profile, has_own) {
            libcontainer::seccomp::initialize_seccomp(profile)
                .map_err(|e| ExecutorError::Other(format!("seccomp profile: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// The stdio a process starts with: each fd becomes its 0, 1 or 2; with a terminal, a console
/// socket where libcontainer sends the pty master.
pub struct ProcessIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub console_socket: Option<PathBuf>,
}

pub struct Container {
    pub id: String,
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    lc: Lc,
    seccomp: Option<LinuxSeccomp>,
}

/// Makes the guest's view of the spec: the rootfs we assembled, a cgroup under ours, and the
/// VM's own network namespace (the pod's network) unless the spec names one.
fn adapt_spec(
    spec: &mut Spec,
    id: &str,
    rootfs: &Path,
) -> Result<(PathBuf, Option<LinuxSeccomp>), ContainerError> {
    if spec.process().is_none() {
        return Err(ContainerError::NoProcess);
    }
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let mut root = libcontainer::oci_spec::runtime::Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(readonly));
    spec.set_root(Some(root));
    let mut linux = spec.linux().clone().unwrap_or_default();
    let cgroup = PathBuf::from(format!("{CGROUP_PARENT}/{id}"));
    linux.set_cgroups_path(Some(cgroup.clone()));
    let mut namespaces: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network || ns.path().is_some())
        .collect();
    // The guest is cgroup v2, where containerd and docker give each container a cgroup
    // namespace of its own; a host on cgroup v1 writes none into the spec, and without one the
    // container's /sys/fs/cgroup would show the guest's root instead of its own limits.
    if !namespaces
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Cgroup)
    {
        let mut cgroup = LinuxNamespace::default();
        cgroup.set_typ(LinuxNamespaceType::Cgroup);
        namespaces.push(cgroup);
    }
    linux.set_namespaces(Some(namespaces));
    let seccomp = linux.seccomp().clone();
    spec.set_linux(Some(linux));
    Ok((cgroup, seccomp))
}

impl Container {
    /// Creates the container (its init process waits for `start`). `rootfs` is mounted.
    pub fn create(
        id: &str,
        mut spec: Spec,
        dir: &Path,
        rootfs: &Path,
        io: ProcessIo,
    ) -> Result<(Container, Pid), ContainerError> {
        validate_id(id)?;
        let (cgroup, seccomp) = adapt_spec(&mut spec, id, rootfs)?;
        let config = dir.join("config.json");
        spec.save(&config)
            .map_err(|e| ContainerError::Runtime(format!("write {}: {e}", config.display())))?;
        let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_executor(SeccompExecutor { profile: None })
            .with_root_path(STATE_ROOT)
            .map_err(runtime("libcontainer state root"))?
            .with_stdin(io.stdin)
            .with_stdout(io.stdout)
            .with_stderr(io.stderr)
            .with_console_socket(io.console_socket);
        let lc = builder
            .as_init(dir)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(runtime("create the container"))?;
        let pid = lc
            .pid()
            .ok_or_else(|| ContainerError::Runtime("the container has no init process".into()))?;
        let container = Container {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            cgroup: Path::new("/sys/fs/cgroup").join(cgroup.strip_prefix("/").unwrap_or(&cgroup)),
            lc,
            seccomp,
        };
        Ok((container, pid))
    }

    pub fn start(&mut self) -> Result<(), ContainerError> {
        self.lc.start().map_err(runtime("start the container"))
    }

    /// Runs another process in the container's namespaces and cgroup.
    pub fn exec(
        &mut self,
        exec_id: &str,
        process: &Process,
        io: ProcessIo,
    ) -> Result<Pid, ContainerError> {
        validate_id(exec_id)?;
        let path = self.dir.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(process).map_err(|e| ContainerError::Io {
            what: "encode the exec process".into(),
            source: e.into(),
        })?;
        std::fs::write(&path, json).map_err(|source| ContainerError::Io {
            what: format!("write {}", path.display()),
            source,
        })?;
        let result = ContainerBuilder::new(self.id.clone(), SyscallType::default())
            .with_executor(SeccompExecutor {
                profile: self.seccomp.clone(),
            })
            .with_root_path(STATE_ROOT)
            .map_err(runtime("libcontainer state root"))?
            .with_stdin(io.stdin)
            .with_stdout(io.stdout)
            .with_stderr(io.stderr)
            .with_console_socket(io.console_socket)
            .as_tenant()
            .with_process(Some(&path))
            .with_detach(true)
            .build()
            .map_err(runtime("exec in the container"));
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Signals every process of the container (`kill --all`).
    pub fn kill_all(&mut self, signal: i32) -> Result<(), ContainerError> {
        let signal = libcontainer::signal::Signal::try_from(signal)
            .map_err(|e| ContainerError::Runtime(format!("signal {signal}: {e}")))?;
        self.lc
            .kill(signal, true)
            .map_err(runtime("signal the container"))
    }

    pub fn pause(&mut self) -> Result<(), ContainerError> {
        self.lc.pause().map_err(runtime("pause the container"))
    }

    pub fn resume(&mut self) -> Result<(), ContainerError> {
        self.lc.resume().map_err(runtime("resume the container"))
    }

    /// Kills what is left and removes libcontainer's state and the cgroup.
    pub fn delete(&mut self) -> Result<(), ContainerError> {
        self.lc
            .delete(true)
            .map_err(runtime("delete the container"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_name_a_path_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        validate_id("web-1.a_b").unwrap();
    }

    #[test]
    fn the_spec_gets_our_rootfs_cgroup_and_the_vms_network() {
        let mut spec = Spec::default();
        let (cgroup, _) = adapt_spec(&mut spec, "c1", Path::new("/run/x/rootfs")).unwrap();
        assert_eq!(cgroup, PathBuf::from("/vmpod/c1"));
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            Path::new("/run/x/rootfs")
        );
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(namespaces
            .iter()
            .all(|n| n.typ() != LinuxNamespaceType::Network));
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Pid));
        let cgroups = namespaces
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Cgroup)
            .count();
        assert_eq!(cgroups, 1, "a cgroup namespace of its own");
    }

    #[test]
    fn a_spec_without_a_process_is_refused() {
        let mut spec = Spec::default();
        spec.set_process(None);
        assert!(matches!(
            adapt_spec(&mut spec, "c1", Path::new("/r")),
            Err(ContainerError::NoProcess)
        ));
    }
}
