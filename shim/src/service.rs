//! containerd's task service for one pod, as `task_*` functions returning [`TaskError`]: every
//! container of the pod in one VM, each call turned into requests to the agent in it. The VM
//! comes from a [`VmHost`], the agent behind [`Agent`], events go to an [`EventSink`]: tests
//! run the service against fakes of all three.
//!
//! [`Agent`]: crate::agent::Agent

use crate::agent::Agent;
use crate::boot::VmHost;
use crate::cri::{self, Role};
use crate::error::TaskError;
use crate::events::EventSink;
use crate::host_cgroup::{CgroupError, PodCgroup};
use crate::spec::{self, VmPlan, SANDBOX_NOTE};
use crate::state::{now, Container, Pod, Proc, ProcState, SharedPod};
use crate::stdio::{Attached, Paths};
use crate::{metrics, rootfs, watch};
use containerd_shim::api;
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::ExitSignal;
use oci_spec::runtime::{LinuxResources, Process, Spec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmpod_protocol::{CreateContainer, ExecProcess, Rootfs, Upper};

#[cfg(test)]
mod tests;

pub struct TaskService {
    namespace: String,
    exit: Arc<ExitSignal>,
    events: Arc<dyn EventSink>,
    host: Arc<dyn VmHost>,
    pod: Arc<SharedPod>,
}

fn paths(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Result<Paths, TaskError> {
    let paths = Paths {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    };
    paths.validate().map_err(TaskError::Invalid)?;
    Ok(paths)
}

fn exec_id(exec_id: &str) -> Option<&str> {
    (!exec_id.is_empty()).then_some(exec_id)
}

impl TaskService {
    pub fn new(
        namespace: String,
        exit: Arc<ExitSignal>,
        events: Arc<dyn EventSink>,
        host: Arc<dyn VmHost>,
    ) -> TaskService {
        TaskService {
            namespace,
            exit,
            events,
            host,
            pod: Arc::default(),
        }
    }

    fn publish(&self, event: impl Event + Send + 'static) {
        self.events.publish(Box::new(event));
    }

    pub fn task_create(
        &self,
        req: &api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        let pid = self.create_container(req)?;
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        });
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Boots the pod's VM for its sandbox (or a plain container, the first of its group), then
    /// creates the container in it.
    fn create_container(&self, req: &api::CreateTaskRequest) -> Result<u32, TaskError> {
        let bundle = Path::new(&req.bundle);
        let mut spec = spec::read_spec(bundle)?;
        let paths = paths(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        let role = cri::role(&spec);
        spec::set_terminal(&mut spec, req.terminal);
        // The sandbox brings no image into the VM: the agent is its pause process.
        let images = if role == Role::Sandbox {
            Vec::new()
        } else {
            let mounts: Vec<rootfs::Mount> = req
                .rootfs
                .iter()
                .map(|m| rootfs::Mount {
                    kind: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect();
            let dirs = rootfs::layer_dirs(&mounts, bundle).map_err(TaskError::Invalid)?;
            self.host.layer_images(&dirs)?
        };
        if role != Role::Plain {
            cri::guest_shm(&mut spec);
        }

        let mut pod = self.pod.lock();
        pod.ensure_new(&req.id)?;
        let netns = cri::guest_namespaces(&mut spec, pod.sandbox_pid());
        let booted_here = !pod.has_vm();
        if booted_here {
            let plan = match role {
                Role::Sandbox => VmPlan::for_pod(&spec, netns),
                Role::Plain => VmPlan::for_container(&spec, images.clone(), netns),
                Role::PodContainer => {
                    return Err(TaskError::NoSandbox {
                        container_id: req.id.clone(),
                        sandbox_id: cri::sandbox_id(&spec).unwrap_or_default(),
                    })
                }
            };
            if role == Role::Sandbox {
                self.join_host_cgroup(&mut pod, &spec)?;
            }
            let vm = match self.host.boot(plan) {
                Ok(vm) => vm,
                Err(e) => {
                    pod.stop_vm();
                    return Err(e);
                }
            };
            let oom_hangup = watch::watch_oom(vm.agent().as_ref(), self.events.clone());
            pod.set_vm(vm, oom_hangup);
        }
        let result = self.create_in_vm(&mut pod, req, spec, paths, &images, role);
        if result.is_err() && booted_here {
            pod.stop_vm();
        }
        let pid = result?;
        if role == Role::Sandbox {
            pod.set_sandbox_pid(pid);
        }
        if let Ok(vm) = pod.vm() {
            let note = vm.state_dir().display().to_string();
            let _ = std::fs::write(bundle.join(SANDBOX_NOTE), note);
        }
        Ok(pid)
    }

    /// The shim, and so the VM it boots, joins the pod's host cgroup when the sandbox names
    /// one in cgroupfs form (a systemd driver's is left alone, as the log says).
    fn join_host_cgroup(&self, pod: &mut Pod, spec: &Spec) -> Result<(), TaskError> {
        let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let Some(path) = path else {
            return Ok(());
        };
        let path = path.display().to_string();
        match PodCgroup::join(&path) {
            Ok(cgroup) => pod.set_host_cgroup(cgroup),
            Err(e @ CgroupError::NotCgroupfs(_)) => {
                log::warn!("the VM stays in the shim's cgroup: {e}")
            }
            Err(e) => return Err(TaskError::HostCgroup(e)),
        }
        Ok(())
    }

    /// The guest's serial of each layer: a disk the VM booted with, or a spare slot it gets now
    /// (once for all the containers that use it); the images that took a slot.
    fn attach_layers(
        &self,
        pod: &mut Pod,
        container_id: &str,
        images: &[PathBuf],
    ) -> Result<(Vec<String>, Vec<PathBuf>), TaskError> {
        let (vm, layers) = pod.vm_and_layers()?;
        let mut at_boot = Vec::new();
        let mut later = Vec::new();
        for image in images {
            match vm.layer_serial(image) {
                Some(serial) => at_boot.push(Some(serial)),
                None => {
                    at_boot.push(None);
                    later.push(image.clone());
                }
            }
        }
        let mut failed_on = None;
        let attached = layers.acquire(&later, |image| {
            failed_on = Some(image.to_path_buf());
            vm.insert_layer(image)
        });
        let slotted = match attached {
            Ok(serials) => serials,
            Err((reason, eject)) => {
                for serial in &eject {
                    vm.eject_layer(serial);
                }
                return Err(TaskError::AttachLayer {
                    container_id: container_id.into(),
                    layer: failed_on.unwrap_or_default(),
                    reason,
                });
            }
        };
        let mut slotted = slotted.into_iter();
        let serials = at_boot
            .into_iter()
            .map(|s| s.or_else(|| slotted.next()).unwrap_or_default())
            .collect();
        Ok((serials, later))
    }

    /// Gives back the slots of a container's layers that no other container uses.
    fn detach_layers(pod: &mut Pod, images: &[PathBuf]) {
        if let Ok((vm, layers)) = pod.vm_and_layers() {
            for serial in &layers.release(images) {
                vm.eject_layer(serial);
            }
        }
    }

    fn create_in_vm(
        &self,
        pod: &mut Pod,
        req: &api::CreateTaskRequest,
        spec: Spec,
        paths: Paths,
        images: &[PathBuf],
        role: Role,
    ) -> Result<u32, TaskError> {
        let (layers, slotted) = self.attach_layers(pod, &req.id, images)?;
        let result = self.create_with_layers(pod, req, spec, paths, layers, role);
        match result {
            Ok(mut container) => {
                container.slot_layers = slotted;
                let pid = container.init.pid;
                pod.add_container(&req.id, container)?;
                Ok(pid)
            }
            Err(e) => {
                Self::detach_layers(pod, &slotted);
                Err(e)
            }
        }
    }

    fn create_with_layers(
        &self,
        pod: &Pod,
        req: &api::CreateTaskRequest,
        mut spec: Spec,
        paths: Paths,
        layers: Vec<String>,
        role: Role,
    ) -> Result<Container, TaskError> {
        let vm = pod.vm()?;
        let agent = vm.agent();
        let shared = vm.share_host_binds(&mut spec).map_err(TaskError::Invalid)?;
        let pid = agent
            .create(CreateContainer {
                container_id: req.id.clone(),
                spec: Box::new(spec),
                rootfs: Rootfs {
                    layers,
                    upper: Upper::Tmpfs,
                },
                stdio: paths.wiring(),
                user: None,
                pod_sandbox: role == Role::Sandbox,
            })
            .inspect_err(|_| vm.unshare(&shared))?;
        let attached = match agent.attach(&req.id, None, &paths, &self.namespace) {
            Ok(a) => a,
            Err(e) => {
                let _ = agent.remove(&req.id);
                vm.unshare(&shared);
                return Err(TaskError::Stdio(e));
            }
        };
        let init = Proc::init(&req.id, paths, pid, attached);
        Ok(Container::new(req.bundle.clone(), shared, init))
    }

    pub fn task_start(&self, req: &api::StartRequest) -> Result<api::StartResponse, TaskError> {
        let mut pod = self.pod.lock();
        let agent = pod.agent()?;
        let p = pod.proc_mut(&req.id, &req.exec_id)?;
        p.ensure_startable()?;
        let attached = if p.is_exec() {
            let process = p.spec.clone().unwrap_or_default();
            let pid = agent.exec(ExecProcess {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process: Box::new(process),
                stdio: p.paths.wiring(),
            })?;
            if let Some(pid) = pid {
                p.pid = pid;
            }
            let attached = agent
                .attach(&req.id, Some(&req.exec_id), &p.paths, &self.namespace)
                .map_err(TaskError::Stdio)?;
            p.stdin = attached.stdin.as_ref().and_then(|s| s.try_clone().ok());
            Some(attached)
        } else {
            agent.start(&req.id)?;
            p.attached.take()
        };
        p.started()?;
        let pid = p.pid;
        drop(pod);
        if req.exec_id.is_empty() {
            self.publish(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            });
        } else {
            self.publish(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            });
        }
        self.watch_exit(agent, &req.id, &req.exec_id, attached);
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn watch_exit(
        &self,
        agent: Arc<dyn Agent>,
        container_id: &str,
        exec_id: &str,
        attached: Option<Attached>,
    ) {
        watch::watch_exit(
            self.pod.clone(),
            self.events.clone(),
            agent,
            container_id.into(),
            exec_id.into(),
            attached,
        );
    }

    pub fn task_delete(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse, TaskError> {
        let mut pod = self.pod.lock();
        let agent = pod.agent().ok();
        let p = pod.proc_mut(&req.id, &req.exec_id)?;
        p.ensure_deletable()?;
        let response = api::DeleteResponse {
            pid: p.pid,
            exit_status: p.exit_status,
            exited_at: MessageField::from_option(p.exited_at.clone().or_else(|| Some(now()))),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            pod.container_mut(&req.id)?.remove_exec(&req.exec_id);
            return Ok(response);
        }
        if let Some(agent) = &agent {
            let _ = agent.remove(&req.id);
        }
        if let Some(c) = pod.remove_container(&req.id) {
            let _ = std::fs::remove_file(Path::new(&c.bundle).join(SANDBOX_NOTE));
            if let Ok(vm) = pod.vm() {
                vm.unshare(&c.shared);
            }
            Self::detach_layers(&mut pod, &c.slot_layers);
        }
        drop(pod);
        self.pod.notify();
        self.publish(TaskDelete {
            container_id: req.id.clone(),
            pid: response.pid,
            exit_status: response.exit_status,
            exited_at: response.exited_at.clone(),
            id: req.id.clone(),
            ..Default::default()
        });
        Ok(response)
    }

    pub fn task_pids(&self, req: &api::PidsRequest) -> Result<api::PidsResponse, TaskError> {
        let agent = {
            let pod = self.pod.lock();
            pod.container(&req.id)?;
            pod.agent()?
        };
        let pids = agent.stats(&req.id)?.pids;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// Freezes or thaws the container's cgroup in the guest.
    pub fn task_set_paused(&self, id: &str, paused: bool) -> Result<(), TaskError> {
        let agent = self.pod.lock().agent()?;
        agent.set_paused(id, paused)?;
        if let Ok(c) = self.pod.lock().container_mut(id) {
            c.paused = paused;
        }
        if paused {
            self.publish(TaskPaused {
                container_id: id.into(),
                ..Default::default()
            });
        } else {
            self.publish(TaskResumed {
                container_id: id.into(),
                ..Default::default()
            });
        }
        Ok(())
    }

    pub fn task_kill(&self, req: &api::KillRequest) -> Result<(), TaskError> {
        let mut pod = self.pod.lock();
        let agent = pod.agent()?;
        let p = pod.proc_mut(&req.id, &req.exec_id)?;
        p.ensure_signallable()?;
        if p.state() == ProcState::Created && p.is_exec() {
            // An exec that never started has no process to signal: it is done.
            p.exited(128 + req.signal, now());
            drop(pod);
            self.pod.notify();
            return Ok(());
        }
        // A container killed before Start (the CRI's clean-up of a failed start) still exits:
        // its watcher starts now, so Wait returns.
        let unstarted = (p.state() == ProcState::Created).then(|| p.attached.take());
        drop(pod);
        if let Some(attached) = unstarted {
            self.watch_exit(agent.clone(), &req.id, "", attached);
        }
        agent.signal(&req.id, exec_id(&req.exec_id), req.signal as i32, req.all)?;
        Ok(())
    }

    pub fn task_exec(&self, req: &api::ExecProcessRequest) -> Result<(), TaskError> {
        let mut process: Process =
            serde_json::from_slice(&req.spec.value).map_err(|source| TaskError::ExecSpec {
                exec_id: req.exec_id.clone(),
                source,
            })?;
        process.set_terminal(Some(req.terminal));
        let paths = paths(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        let exec = Proc::exec(&req.id, &req.exec_id, paths, process);
        self.pod.lock().container_mut(&req.id)?.add_exec(exec)?;
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }

    pub fn task_resize_pty(&self, req: &api::ResizePtyRequest) -> Result<(), TaskError> {
        let agent = self.pod.lock().agent()?;
        agent.resize_pty(
            &req.id,
            exec_id(&req.exec_id),
            req.height.min(u32::from(u16::MAX)) as u16,
            req.width.min(u32::from(u16::MAX)) as u16,
        )?;
        Ok(())
    }

    pub fn task_close_io(&self, req: &api::CloseIORequest) -> Result<(), TaskError> {
        self.pod
            .lock()
            .proc_mut(&req.id, &req.exec_id)?
            .close_stdin();
        Ok(())
    }

    pub fn task_update(&self, req: &api::UpdateTaskRequest) -> Result<(), TaskError> {
        let resources: LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(TaskError::Resources)?;
        let agent = self.pod.lock().agent()?;
        agent.update(&req.id, resources)?;
        Ok(())
    }

    pub fn task_wait(&self, req: &api::WaitRequest) -> Result<api::WaitResponse, TaskError> {
        let (exit_status, exited_at) = self.pod.wait_exit(&req.id, &req.exec_id)?;
        Ok(api::WaitResponse {
            exit_status,
            exited_at: MessageField::from_option(exited_at),
            ..Default::default()
        })
    }

    pub fn task_stats(&self, req: &api::StatsRequest) -> Result<api::StatsResponse, TaskError> {
        let agent = self.pod.lock().agent()?;
        let stats = agent.stats(&req.id)?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics::from_stats(&stats)))
            .map_err(TaskError::Metrics)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    pub fn task_state(&self, req: &api::StateRequest) -> Result<api::StateResponse, TaskError> {
        let pod = self.pod.lock();
        let c = pod.container(&req.id)?;
        let p = c.proc(&req.exec_id)?;
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: p.pid,
            status: EnumOrUnknown::new(p.status(c.paused)),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: p.exit_status,
            exited_at: MessageField::from_option(p.exited_at.clone()),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    /// The init process's pid in the VM, 0 when there is none.
    pub fn task_pid(&self, container_id: &str) -> u32 {
        let pod = self.pod.lock();
        pod.container(container_id).map(|c| c.init.pid).unwrap_or(0)
    }

    /// The shim stays while the pod has containers; when none is left, the VM is stopped on a
    /// thread and the shim told to exit once it is down (containerd waits a few seconds at
    /// most for the reply).
    pub fn task_shutdown(&self) {
        let mut pod = self.pod.lock();
        if !pod.is_empty() {
            return;
        }
        let vm = pod.stop_vm();
        drop(pod);
        let exit = self.exit.clone();
        let stop = move || {
            drop(vm);
            exit.signal();
        };
        // A thread that cannot start drops the VM here (stopping it) and exits all the same.
        if let Err(e) = std::thread::Builder::new()
            .name("stop-vm".into())
            .spawn(stop)
        {
            log::warn!("stop the VM on a thread: {e}");
            self.exit.signal();
        }
    }
}
