//! What a pod's containers share inside the guest besides the VM (its network, its kernel):
//! the sandbox's pause process, which holds the pod's IPC and UTS namespaces (and its PID
//! namespace when the pod shares one) as Kubernetes' pause container does under runc, and one
//! /dev/shm tmpfs. The pause process is this binary, bound read-only into an empty root: the
//! pod needs no pause image, so no disk.

use libcontainer::oci_spec::runtime::{MountBuilder, Spec};
use nix::mount::{mount, MsFlags};
use std::path::{Path, PathBuf};
use vmpod_protocol::POD_SHM_DIR;

/// Where the agent's binary appears in the sandbox's root; run under this name, it pauses.
pub const PAUSE_PATH: &str = "/pause";
/// docker's and containerd's default size of a container's /dev/shm.
const SHM_OPTIONS: &str = "mode=1777,size=65536k";

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("the pod's sandbox takes no image layers, {0} given")]
    SandboxLayers(usize),
    #[error("the sandbox's spec has no process")]
    NoProcess,
    #[error("sandbox spec: {0}")]
    Spec(String),
    #[error("create {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("the agent's binary is not at {} (init binds it there at boot)", .0.display())]
    NoBinary(PathBuf),
    #[error("mount the pod's /dev/shm tmpfs at {POD_SHM_DIR}")]
    Shm(#[source] nix::Error),
}

/// The sandbox's spec as the agent runs it: its pause process in place of the image's, and
/// the agent's binary (`own`, [`PodMounts::pause_binary`]) bound read-only at
/// [`PAUSE_PATH`].
pub fn sandbox_spec(spec: &Spec, layers: usize, own: &Path) -> Result<Spec, PodError> {
    if layers != 0 {
        return Err(PodError::SandboxLayers(layers));
    }
    sandbox_spec_with(spec, own)
}

fn sandbox_spec_with(spec: &Spec, own: &Path) -> Result<Spec, PodError> {
    let mut spec = spec.clone();
    let mut process = spec.process().clone().ok_or(PodError::NoProcess)?;
    process.set_args(Some(vec![PAUSE_PATH.to_string()]));
    process.set_cwd(PathBuf::from("/"));
    spec.set_process(Some(process));
    let pause = MountBuilder::default()
        .destination(PAUSE_PATH)
        .typ("bind")
        .source(own)
        .options(vec![
            "bind".into(),
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
        ])
        .build()
        .map_err(|e| PodError::Spec(e.to_string()))?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|m| m.destination() != Path::new(PAUSE_PATH));
    mounts.push(pause);
    spec.set_mounts(Some(mounts));
    Ok(spec)
}

/// The pod's mounts in the guest, each made once per VM.
#[derive(Debug, Default)]
pub struct PodMounts {
    shm: bool,
}

impl PodMounts {
    /// The agent's own binary, for a sandbox to bind: where init bound it at boot.
    pub fn pause_binary(&self) -> Result<PathBuf, PodError> {
        let binary = Path::new(crate::init::AGENT_BINARY);
        if !binary.is_file() {
            return Err(PodError::NoBinary(binary.into()));
        }
        Ok(binary.into())
    }

    /// Mounts the pod's /dev/shm tmpfs if `spec` binds it and it is not mounted yet.
    pub fn prepare_for(&mut self, spec: &Spec) -> Result<(), PodError> {
        let uses = spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.source().as_deref() == Some(Path::new(POD_SHM_DIR)));
        if uses && !self.shm {
            std::fs::create_dir_all(POD_SHM_DIR)
                .map_err(|e| PodError::Dir(POD_SHM_DIR.into(), e))?;
            mount(
                Some("shm"),
                POD_SHM_DIR,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(SHM_OPTIONS),
            )
            .map_err(PodError::Shm)?;
            self.shm = true;
        }
        Ok(())
    }
}

/// The pause process: it holds the pod's namespaces until it is told to stop, and reaps what
/// is reparented to it while it is PID 1 of the pod's PID namespace.
pub fn pause() -> ! {
    extern "C" fn stop(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    extern "C" fn reap(_: libc::c_int) {
        // SAFETY: waitpid is async-signal-safe; a null status pointer is allowed.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    }
    let handlers: [(libc::c_int, extern "C" fn(libc::c_int)); 3] = [
        (libc::SIGINT, stop),
        (libc::SIGTERM, stop),
        (libc::SIGCHLD, reap),
    ];
    for (signal, handler) in handlers {
        // SAFETY: the handlers only call async-signal-safe functions; the sigaction is
        // zeroed (an empty mask) apart from the handler.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_sandbox_runs_the_agents_binary_as_pause_and_keeps_its_namespaces() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","hostname":"web-0","process":{"args":["/pause"],"cwd":"/x","user":{"uid":65535,"gid":65535}},
                "mounts":[{"destination":"/dev/shm","type":"bind","source":"/run/vmpod/pod/shm","options":["rbind","ro"]}],
                "linux":{"namespaces":[{"type":"ipc"},{"type":"uts"},{"type":"pid"}]}}"#,
        );
        let out = sandbox_spec_with(&s, Path::new("/init")).unwrap();
        let process = out.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &[PAUSE_PATH.to_string()]);
        assert_eq!(process.cwd(), Path::new("/"));
        assert_eq!(process.user().uid(), 65535);
        let mounts = out.mounts().as_ref().unwrap();
        let pause = mounts
            .iter()
            .find(|m| m.destination() == Path::new(PAUSE_PATH))
            .unwrap();
        assert_eq!(pause.source().as_deref(), Some(Path::new("/init")));
        assert!(pause.options().as_ref().unwrap().contains(&"ro".into()));
        assert_eq!(mounts.len(), 2);
        assert_eq!(out.hostname().as_deref(), Some("web-0"));
        assert_eq!(out.linux(), s.linux());
    }

    #[test]
    fn a_sandbox_with_layers_or_without_a_process_is_refused() {
        let s = spec(
            r#"{"ociVersion":"1.0.2","process":{"args":["/pause"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        assert!(matches!(
            sandbox_spec(&s, 2, Path::new("/init")),
            Err(PodError::SandboxLayers(2))
        ));
        let mut none = s.clone();
        none.set_process(None);
        assert!(matches!(
            sandbox_spec_with(&none, Path::new("/init")),
            Err(PodError::NoProcess)
        ));
    }
}
