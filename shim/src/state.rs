//! The pod as the shim knows it: its VM, its containers and their processes. A process goes
//! Created → Running → Stopped; each transition is a method that refuses, with a typed error,
//! what its state does not allow. [`SharedPod`] is the pod behind its lock, with the condition
//! variable `Wait` sleeps on.

use crate::agent::{Agent, Hangup};
use crate::boot::PodVm;
use crate::error::TaskError;
use crate::host_cgroup::PodCgroup;
use crate::layers::AttachedLayers;
use crate::stdio::{Attached, Paths};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status;
use oci_spec::runtime::Process;
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Created,
    Running,
    Stopped,
}

/// A container's init process (`exec_id` empty) or one of its execs.
pub struct Proc {
    container_id: String,
    exec_id: String,
    state: ProcState,
    pub paths: Paths,
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: Option<Timestamp>,
    /// Our end of its stdin, for CloseIO.
    pub stdin: Option<UnixStream>,
    /// For an exec: what to run.
    pub spec: Option<Process>,
    /// Set from Create until Start hands the streams to the process's watcher.
    pub attached: Option<Attached>,
}

impl Proc {
    /// A container's init process, created in the guest with its stdio attached.
    pub fn init(container_id: &str, paths: Paths, pid: u32, attached: Attached) -> Proc {
        let mut p = Proc::new(container_id, "", paths, None);
        p.pid = pid;
        p.stdin = attached.stdin.as_ref().and_then(|s| s.try_clone().ok());
        p.attached = Some(attached);
        p
    }

    /// An exec, known to the shim only until Start.
    pub fn exec(container_id: &str, exec_id: &str, paths: Paths, process: Process) -> Proc {
        Proc::new(container_id, exec_id, paths, Some(process))
    }

    fn new(container_id: &str, exec_id: &str, paths: Paths, spec: Option<Process>) -> Proc {
        Proc {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            state: ProcState::Created,
            paths,
            pid: 0,
            exit_status: 0,
            exited_at: None,
            stdin: None,
            spec,
            attached: None,
        }
    }

    pub fn state(&self) -> ProcState {
        self.state
    }

    pub fn is_exec(&self) -> bool {
        !self.exec_id.is_empty()
    }

    /// Start is allowed once, from Created.
    pub fn ensure_startable(&self) -> Result<(), TaskError> {
        match self.state {
            ProcState::Created => Ok(()),
            _ => Err(TaskError::StartedAlready {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            }),
        }
    }

    /// Created → Running, once the guest has started it.
    pub fn started(&mut self) -> Result<(), TaskError> {
        self.ensure_startable()?;
        self.state = ProcState::Running;
        Ok(())
    }

    /// A process that is done can no longer be signalled.
    pub fn ensure_signallable(&self) -> Result<(), TaskError> {
        match self.state {
            ProcState::Stopped => Err(TaskError::Finished {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// A running process is killed before it is deleted.
    pub fn ensure_deletable(&self) -> Result<(), TaskError> {
        match self.state {
            ProcState::Running => Err(TaskError::StillRunning {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// → Stopped, with its exit status.
    pub fn exited(&mut self, status: u32, at: Timestamp) {
        self.state = ProcState::Stopped;
        self.exit_status = status;
        self.exited_at = Some(at);
    }

    /// Its exit status and time, once it is Stopped.
    pub fn exit(&self) -> Option<(u32, Option<Timestamp>)> {
        (self.state == ProcState::Stopped).then(|| (self.exit_status, self.exited_at.clone()))
    }

    /// Closes our end of its stdin (CloseIO); later calls do nothing.
    pub fn close_stdin(&mut self) {
        if let Some(stdin) = self.stdin.take() {
            let _ = stdin.shutdown(std::net::Shutdown::Write);
        }
    }

    /// containerd's status for it, in a container that may be paused.
    pub fn status(&self, paused: bool) -> Status {
        match self.state {
            ProcState::Created => Status::CREATED,
            ProcState::Running if paused => Status::PAUSED,
            ProcState::Running => Status::RUNNING,
            ProcState::Stopped => Status::STOPPED,
        }
    }
}

pub struct Container {
    pub bundle: String,
    /// Its host binds, as the guest sees them in the shared directory.
    pub shared: Vec<String>,
    /// Its layers that were attached to the running VM (not at boot), to give back.
    pub slot_layers: Vec<PathBuf>,
    pub init: Proc,
    execs: HashMap<String, Proc>,
    pub paused: bool,
}

impl Container {
    pub fn new(bundle: String, shared: Vec<String>, init: Proc) -> Container {
        Container {
            bundle,
            shared,
            slot_layers: Vec::new(),
            init,
            execs: HashMap::new(),
            paused: false,
        }
    }

    /// Execs join a running container, each under an id of its own.
    pub fn add_exec(&mut self, exec: Proc) -> Result<(), TaskError> {
        if self.init.state != ProcState::Running {
            return Err(TaskError::ContainerNotRunning(
                self.init.container_id.clone(),
            ));
        }
        if self.execs.contains_key(&exec.exec_id) {
            return Err(TaskError::ExecExists(exec.exec_id));
        }
        self.execs.insert(exec.exec_id.clone(), exec);
        Ok(())
    }

    pub fn remove_exec(&mut self, exec_id: &str) -> Option<Proc> {
        self.execs.remove(exec_id)
    }

    /// Its init process (`exec_id` empty) or one of its execs.
    pub fn proc(&self, exec_id: &str) -> Result<&Proc, TaskError> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or_else(|| self.no_exec(exec_id))
    }

    pub fn proc_mut(&mut self, exec_id: &str) -> Result<&mut Proc, TaskError> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let missing = self.no_exec(exec_id);
        self.execs.get_mut(exec_id).ok_or(missing)
    }

    fn no_exec(&self, exec_id: &str) -> TaskError {
        TaskError::NoExec {
            container_id: self.init.container_id.clone(),
            exec_id: exec_id.into(),
        }
    }
}

/// A VM taken out of its pod: dropping it stops the VM, then leaves the pod's host cgroup,
/// which is empty only once the VM's processes are gone.
pub struct StoppingVm {
    vm: Option<Box<dyn PodVm>>,
    host_cgroup: Option<PodCgroup>,
}

impl Drop for StoppingVm {
    fn drop(&mut self) {
        drop(self.vm.take());
        drop(self.host_cgroup.take());
    }
}

#[derive(Default)]
pub struct Pod {
    vm: Option<Box<dyn PodVm>>,
    /// Hangs up the OOM watcher's connection: the agent powers off only once its clients do.
    oom_hangup: Option<Hangup>,
    containers: HashMap<String, Container>,
    /// The guest pid of the pod's pause process, once its sandbox container exists.
    sandbox_pid: Option<u32>,
    /// Layers attached to the running VM, counted by the containers using them.
    layers: AttachedLayers,
    /// The pod's host cgroup the shim (and so the VM) joined; left once the VM is down.
    host_cgroup: Option<PodCgroup>,
}

impl Pod {
    pub fn sandbox_pid(&self) -> Option<u32> {
        self.sandbox_pid
    }

    pub fn set_host_cgroup(&mut self, cgroup: PodCgroup) {
        self.host_cgroup = Some(cgroup);
    }

    pub fn set_sandbox_pid(&mut self, pid: u32) {
        self.sandbox_pid = Some(pid);
    }

    pub fn has_vm(&self) -> bool {
        self.vm.is_some()
    }

    /// The VM is the first container's to boot; it stays until [`Pod::stop_vm`].
    pub fn set_vm(&mut self, vm: Box<dyn PodVm>, oom_hangup: Option<Hangup>) {
        self.vm = Some(vm);
        self.oom_hangup = oom_hangup;
    }

    pub fn vm(&self) -> Result<&dyn PodVm, TaskError> {
        self.vm.as_deref().ok_or(TaskError::VmNotRunning)
    }

    /// The VM with the table of layers attached to it while it runs.
    pub fn vm_and_layers(&mut self) -> Result<(&dyn PodVm, &mut AttachedLayers), TaskError> {
        let vm = self.vm.as_deref().ok_or(TaskError::VmNotRunning)?;
        Ok((vm, &mut self.layers))
    }

    pub fn agent(&self) -> Result<Arc<dyn Agent>, TaskError> {
        Ok(self.vm()?.agent())
    }

    /// Takes the VM out of the pod, our own connections closed so the agent powers off at once;
    /// dropping what is returned stops it.
    pub fn stop_vm(&mut self) -> StoppingVm {
        if let Some(hangup) = self.oom_hangup.take() {
            hangup();
        }
        StoppingVm {
            vm: self.vm.take(),
            host_cgroup: self.host_cgroup.take(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    /// A container's id is taken once.
    pub fn ensure_new(&self, container_id: &str) -> Result<(), TaskError> {
        match self.containers.contains_key(container_id) {
            true => Err(TaskError::ContainerExists(container_id.into())),
            false => Ok(()),
        }
    }

    pub fn add_container(&mut self, container_id: &str, c: Container) -> Result<(), TaskError> {
        self.ensure_new(container_id)?;
        self.containers.insert(container_id.into(), c);
        Ok(())
    }

    pub fn remove_container(&mut self, container_id: &str) -> Option<Container> {
        self.containers.remove(container_id)
    }

    pub fn container(&self, container_id: &str) -> Result<&Container, TaskError> {
        self.containers
            .get(container_id)
            .ok_or_else(|| TaskError::NoContainer(container_id.into()))
    }

    pub fn container_mut(&mut self, container_id: &str) -> Result<&mut Container, TaskError> {
        self.containers
            .get_mut(container_id)
            .ok_or_else(|| TaskError::NoContainer(container_id.into()))
    }

    pub fn proc_mut(&mut self, container_id: &str, exec_id: &str) -> Result<&mut Proc, TaskError> {
        self.container_mut(container_id)?.proc_mut(exec_id)
    }
}

/// The pod behind its lock; `changed` wakes Wait when a process stops or a container goes.
#[derive(Default)]
pub struct SharedPod {
    pod: Mutex<Pod>,
    changed: Condvar,
}

impl SharedPod {
    /// A panic elsewhere does not make the pod unreachable.
    pub fn lock(&self) -> MutexGuard<'_, Pod> {
        self.pod.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Blocks until the process is Stopped; its exit status and time.
    pub fn wait_exit(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<(u32, Option<Timestamp>), TaskError> {
        let mut pod = self.lock();
        loop {
            if let Some(exit) = pod.proc_mut(container_id, exec_id)?.exit() {
                return Ok(exit);
            }
            pod = self.changed.wait(pod).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_container() -> Container {
        let mut init = Proc::init("c1", Paths::default(), 7, Attached::default());
        init.started().unwrap();
        Container::new("/b".into(), Vec::new(), init)
    }

    #[test]
    fn a_process_starts_once_and_is_deleted_only_when_not_running() {
        let mut p = Proc::init("c1", Paths::default(), 7, Attached::default());
        assert_eq!(p.status(false), Status::CREATED);
        p.ensure_deletable().unwrap();
        p.started().unwrap();
        assert_eq!(p.status(false), Status::RUNNING);
        assert_eq!(p.status(true), Status::PAUSED);
        assert!(matches!(p.started(), Err(TaskError::StartedAlready { .. })));
        assert!(matches!(
            p.ensure_deletable(),
            Err(TaskError::StillRunning { .. })
        ));
        assert_eq!(p.exit(), None);
        p.exited(3, now());
        assert_eq!(p.status(false), Status::STOPPED);
        assert_eq!(p.exit().map(|(s, _)| s), Some(3));
        p.ensure_deletable().unwrap();
        assert!(matches!(
            p.ensure_signallable(),
            Err(TaskError::Finished { .. })
        ));
    }

    #[test]
    fn execs_join_only_a_running_container_under_new_ids() {
        let exec = || Proc::exec("c1", "e1", Paths::default(), Process::default());
        let mut created = Container::new(
            "/b".into(),
            Vec::new(),
            Proc::init("c1", Paths::default(), 7, Attached::default()),
        );
        assert!(matches!(
            created.add_exec(exec()),
            Err(TaskError::ContainerNotRunning(id)) if id == "c1"
        ));
        let mut c = running_container();
        c.add_exec(exec()).unwrap();
        assert!(c.proc("e1").unwrap().is_exec());
        assert!(matches!(
            c.add_exec(exec()),
            Err(TaskError::ExecExists(id)) if id == "e1"
        ));
        assert!(c.remove_exec("e1").is_some());
        assert!(matches!(c.proc("e1"), Err(TaskError::NoExec { .. })));
    }

    #[test]
    fn a_pod_names_what_it_does_not_have() {
        let mut pod = Pod::default();
        assert!(matches!(pod.agent(), Err(TaskError::VmNotRunning)));
        assert!(matches!(
            pod.proc_mut("c1", ""),
            Err(TaskError::NoContainer(id)) if id == "c1"
        ));
        pod.add_container("c1", running_container()).unwrap();
        assert!(matches!(
            pod.add_container("c1", running_container()),
            Err(TaskError::ContainerExists(id)) if id == "c1"
        ));
        assert_eq!(pod.proc_mut("c1", "").unwrap().pid, 7);
    }
}
