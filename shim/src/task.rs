//! containerd's task service for one pod: every container of the pod in one VM, each call
//! turned into requests to the agent in it.

use crate::events::Events;
use crate::stdio::{self, Attached, Paths};
use crate::vm::Vm;
use crate::{binds, metrics, rootfs};
use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use vmpod_protocol::{
    Client, CreateContainer, Event, ExecProcess, RequestBody, ResponseBody, Rootfs, Upper,
};
use vmpod_sandbox::hypervisor::Disk;
use vmpod_sandbox::{Backend, Boot, Endpoint, SandboxConfig};

/// Where the shim notes the VM's state directory in each bundle, for `delete` after a crash.
pub const SANDBOX_NOTE: &str = "vmpod-sandbox";
/// The guest kernel, agent and page cache need this beside the containers' memory limit.
pub const VM_OVERHEAD_MIB: u64 = 96;
pub const DEFAULT_VM_MIB: u64 = 256;

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn not_found(what: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what}: not found"))
}

fn failed(message: impl Into<String>) -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, message)
}

fn internal(message: impl Into<String>) -> ttrpc::Error {
    status(Code::UNKNOWN, message)
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Stopped,
}

struct Proc {
    paths: Paths,
    pid: u32,
    state: State,
    exit_status: u32,
    exited_at: Option<Timestamp>,
    /// Our end of its stdin, for CloseIO.
    stdin: Option<UnixStream>,
    /// For an exec: what to run.
    spec: Option<Process>,
    /// Set from Create until Start hands the streams to the process's waiter.
    attached: Option<Attached>,
}

impl Proc {
    fn new(paths: Paths, spec: Option<Process>) -> Proc {
        Proc {
            paths,
            pid: 0,
            state: State::Created,
            exit_status: 0,
            exited_at: None,
            stdin: None,
            spec,
            attached: None,
        }
    }
}

struct Container {
    bundle: String,
    /// Its host binds, as the guest sees them in the shared directory.
    shared: Vec<String>,
    init: Proc,
    execs: HashMap<String, Proc>,
    paused: bool,
}

#[derive(Default)]
struct Pod {
    vm: Option<Vm>,
    /// The OOM watcher's connection: the agent powers off only once its clients hang up.
    oom_watch: Option<UnixStream>,
    containers: HashMap<String, Container>,
}

impl Pod {
    fn proc_mut(&mut self, id: &str, exec: &str) -> ttrpc::Result<&mut Proc> {
        let c = self
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found(format!("container {id}")))?;
        if exec.is_empty() {
            Ok(&mut c.init)
        } else {
            c.execs
                .get_mut(exec)
                .ok_or_else(|| not_found(format!("exec {exec} in {id}")))
        }
    }

    /// Stops the VM (closing our own connections first, so the agent powers off at once).
    fn stop_vm(&mut self) -> Option<Vm> {
        if let Some(c) = self.oom_watch.take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        self.vm.take()
    }

    fn endpoint(&self) -> ttrpc::Result<Endpoint> {
        self.vm
            .as_ref()
            .map(|vm| vm.endpoint.clone())
            .ok_or_else(|| failed("the pod's VM is not running"))
    }
}

pub struct Inner {
    namespace: String,
    exit: Arc<ExitSignal>,
    events: Mutex<Option<Events>>,
    pod: Mutex<Pod>,
    changed: Condvar,
}

#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

fn agent(endpoint: &Endpoint) -> ttrpc::Result<Client<UnixStream>> {
    endpoint
        .control()
        .map_err(|e| internal(format!("reach the agent: {e}")))
}

fn call(endpoint: &Endpoint, body: RequestBody) -> ttrpc::Result<ResponseBody> {
    agent(endpoint)?.call(body).map_err(|e| {
        let code = match &e {
            vmpod_protocol::ClientError::Refused(r) => match r.kind {
                vmpod_protocol::ErrorKind::NotFound => Code::NOT_FOUND,
                vmpod_protocol::ErrorKind::BadRequest => Code::INVALID_ARGUMENT,
                vmpod_protocol::ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
                vmpod_protocol::ErrorKind::InvalidState => Code::FAILED_PRECONDITION,
                _ => Code::UNKNOWN,
            },
            _ => Code::UNKNOWN,
        };
        status(code, e.to_string())
    })
}

/// The VM's size from the first container's resources: its memory limit plus the overhead,
/// and as many vCPUs as its CPU quota asks for.
pub fn vm_size(spec: &Spec) -> (u8, u32) {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let memory = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
        .filter(|l| *l > 0)
        .map(|l| (l as u64 >> 20) + VM_OVERHEAD_MIB)
        .unwrap_or(DEFAULT_VM_MIB);
    let cpus = resources
        .as_ref()
        .and_then(|r| r.cpu().clone())
        .and_then(|c| Some((c.quota()?, c.period()?)))
        .filter(|(q, p)| *q > 0 && *p > 0)
        .map(|(q, p)| (q as u64).div_ceil(p).clamp(1, 64) as u8)
        .unwrap_or(1);
    (cpus, memory.min(u64::from(u32::MAX)) as u32)
}

/// The spec as the guest sees it: namespace paths name the host's (a CRI pod's pause
/// container, the CNI's netns), which the VM replaces; the network one is returned so the
/// sandbox wires it to the VM. Bind mounts of host paths are shared when the VM runs
/// (binds.rs).
pub fn adapt_spec(spec: &mut Spec) -> Result<Option<PathBuf>, String> {
    let mut netns = None;
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            let mut kept = Vec::new();
            for mut ns in namespaces {
                if let Some(path) = ns.path().clone() {
                    if ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
                        netns = Some(path);
                    }
                    ns.set_path(None);
                }
                kept.push(ns);
            }
            linux.set_namespaces(Some(kept));
        }
        spec.set_linux(Some(linux));
    }
    Ok(netns)
}

impl TaskService {
    pub fn new(namespace: String, exit: Arc<ExitSignal>) -> TaskService {
        TaskService {
            inner: Arc::new(Inner {
                namespace,
                exit,
                events: Mutex::new(None),
                pod: Mutex::new(Pod::default()),
                changed: Condvar::new(),
            }),
        }
    }

    pub fn set_events(&self, events: Events) {
        *self.lock_events() = Some(events);
    }

    fn lock_events(&self) -> MutexGuard<'_, Option<Events>> {
        self.inner.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, event: impl containerd_shim::event::Event + Send + 'static) {
        if let Some(events) = self.lock_events().as_ref() {
            events.send(event);
        }
    }

    fn pod(&self) -> MutexGuard<'_, Pod> {
        self.inner.pod.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pushed OOM kills become TaskOOM events, for as long as the VM runs.
    fn watch_oom(&self, endpoint: &Endpoint) -> Option<UnixStream> {
        let mut client = endpoint.control().ok()?;
        let connection = client.stream().try_clone().ok();
        let service = self.clone();
        std::thread::spawn(move || {
            while let Ok(event) = client.next_event() {
                if let Event::Oom { container_id } = event {
                    service.publish(TaskOOM {
                        container_id,
                        ..Default::default()
                    });
                }
            }
        });
        connection
    }

    /// Waits for the process on its own connection; records the exit once its output is out.
    fn watch_exit(&self, endpoint: Endpoint, id: String, exec: String, attached: Option<Attached>) {
        let service = self.clone();
        std::thread::spawn(move || {
            let exec_id = (!exec.is_empty()).then_some(exec.as_str());
            let result = endpoint
                .control()
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.wait(&id, exec_id).map_err(|e| e.to_string()));
            if let Some(a) = attached {
                a.finish();
            }
            // A VM that died takes its processes with it: they are reported killed.
            let code = match &result {
                Ok(exit) => exit.status as u32,
                Err(e) => {
                    log::warn!("{id}/{exec}: lost the process: {e}");
                    137
                }
            };
            let at = now();
            let pid = {
                let mut pod = service.pod();
                let Ok(p) = pod.proc_mut(&id, &exec) else {
                    return;
                };
                p.state = State::Stopped;
                p.exit_status = code;
                p.exited_at = Some(at.clone());
                p.pid
            };
            service.inner.changed.notify_all();
            service.publish(TaskExit {
                container_id: id.clone(),
                id: if exec.is_empty() {
                    id.clone()
                } else {
                    exec.clone()
                },
                pid,
                exit_status: code,
                exited_at: MessageField::some(at),
                ..Default::default()
            });
        });
    }

    fn create_container(&self, req: &api::CreateTaskRequest) -> Result<u32, ttrpc::Error> {
        let bundle = Path::new(&req.bundle);
        let config = bundle.join("config.json");
        let mut spec: Spec = std::fs::read(&config)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{}: {e}", config.display())))?;
        let paths = Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        paths
            .validate()
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let netns = adapt_spec(&mut spec).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        if let Some(mut process) = spec.process().clone() {
            process.set_terminal(Some(req.terminal));
            spec.set_process(Some(process));
        }
        let mounts: Vec<rootfs::Mount> = req
            .rootfs
            .iter()
            .map(|m| rootfs::Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let dirs =
            rootfs::layer_dirs(&mounts, bundle).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let images = rootfs::layer_images(&dirs).map_err(internal)?;

        let mut pod = self.pod();
        if pod.containers.contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} exists", req.id),
            ));
        }
        let booted_here = pod.vm.is_none();
        if booted_here {
            let (cpus, memory_mib) = vm_size(&spec);
            let hypervisor = std::env::var("VMPOD_HYPERVISOR").unwrap_or_else(|_| "auto".into());
            let backend = Backend::choose(&hypervisor).map_err(|e| internal(e.to_string()))?;
            // Restored from a template; VMPOD_COLD_BOOT in the shim's environment boots.
            let boot = if std::env::var_os("VMPOD_COLD_BOOT").is_some() {
                Boot::Cold
            } else {
                Boot::Template
            };
            let vm = Vm::boot(SandboxConfig {
                boot,
                backend,
                cpus,
                memory_mib,
                disks: images
                    .iter()
                    .enumerate()
                    .map(|(i, path)| Disk {
                        path: path.clone(),
                        serial: format!("layer{i}"),
                        read_only: true,
                    })
                    .collect(),
                shared: Vec::new(),
                debug: std::env::var_os("VMPOD_DEBUG").is_some(),
                kernel_args: String::new(),
                netns,
            })
            .map_err(|e| internal(format!("start the pod's VM: {e}")))?;
            pod.oom_watch = self.watch_oom(&vm.endpoint);
            pod.vm = Some(vm);
        }
        let result = self.create_in_vm(&mut pod, req, spec, paths, &images);
        if result.is_err() && booted_here {
            pod.stop_vm();
        }
        let pid = result?;
        if let Some(vm) = &pod.vm {
            let _ = std::fs::write(
                bundle.join(SANDBOX_NOTE),
                vm.state_dir.display().to_string(),
            );
        }
        Ok(pid)
    }

    fn create_in_vm(
        &self,
        pod: &mut Pod,
        req: &api::CreateTaskRequest,
        mut spec: Spec,
        paths: Paths,
        images: &[PathBuf],
    ) -> Result<u32, ttrpc::Error> {
        let vm = pod
            .vm
            .as_ref()
            .ok_or_else(|| failed("the pod's VM is not running"))?;
        // Disks are attached when the VM boots: a later container of the pod must use layers
        // the VM already has.
        let mut serials = Vec::new();
        for image in images {
            match vm.disks.iter().find(|(path, _)| path == image) {
                Some((_, serial)) => serials.push(serial.clone()),
                None => {
                    return Err(failed(format!(
                        "container {}: its layer {} is not attached to the pod's VM, and vmpod cannot attach disks to a running VM yet (containers of a pod must share their image layers)",
                        req.id,
                        image.display()
                    )))
                }
            }
        }
        let endpoint = vm.endpoint.clone();
        let shared_dir = vm.shared.clone();
        let shared = binds::share_host_binds(&mut spec, &shared_dir)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let reply = call(
            &endpoint,
            RequestBody::CreateContainer(CreateContainer {
                container_id: req.id.clone(),
                spec: Box::new(spec),
                rootfs: Rootfs {
                    layers: serials,
                    upper: Upper::Tmpfs,
                },
                stdio: paths.wiring(),
                user: None,
            }),
        )
        .inspect_err(|_| binds::unshare(&shared_dir, &shared))?;
        let pid = match reply {
            ResponseBody::Pid(pid) => pid as u32,
            _ => 0,
        };
        let attached = match stdio::attach(&endpoint, &req.id, None, &paths, &self.inner.namespace)
        {
            Ok(a) => a,
            Err(e) => {
                let _ = call(
                    &endpoint,
                    RequestBody::RemoveContainer {
                        container_id: req.id.clone(),
                    },
                );
                binds::unshare(&shared_dir, &shared);
                return Err(internal(e));
            }
        };
        let mut init = Proc::new(paths, None);
        init.pid = pid;
        init.stdin = attached.stdin.as_ref().and_then(|s| s.try_clone().ok());
        init.attached = Some(attached);
        pod.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                shared,
                init,
                execs: HashMap::new(),
                paused: false,
            },
        );
        Ok(pid)
    }

    /// Freezes or thaws the container's cgroup in the guest.
    fn set_paused(&self, id: &str, paused: bool) -> ttrpc::Result<()> {
        let endpoint = self.pod().endpoint()?;
        let container_id = id.to_string();
        call(
            &endpoint,
            if paused {
                RequestBody::PauseContainer { container_id }
            } else {
                RequestBody::ResumeContainer { container_id }
            },
        )?;
        if let Some(c) = self.pod().containers.get_mut(id) {
            c.paused = paused;
        }
        Ok(())
    }

    fn state_of(p: &Proc, paused: bool) -> Status {
        match p.state {
            State::Created => Status::CREATED,
            State::Running if paused => Status::PAUSED,
            State::Running => Status::RUNNING,
            State::Stopped => Status::STOPPED,
        }
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.create_container(&req)?;
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

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let mut pod = self.pod();
        let endpoint = pod.endpoint()?;
        let namespace = self.inner.namespace.clone();
        let p = pod.proc_mut(&req.id, &req.exec_id)?;
        if p.state != State::Created {
            return Err(failed(format!(
                "{} {} was started already",
                req.id, req.exec_id
            )));
        }
        let attached = if req.exec_id.is_empty() {
            call(
                &endpoint,
                RequestBody::StartContainer {
                    container_id: req.id.clone(),
                },
            )?;
            p.attached.take()
        } else {
            let process = p.spec.clone().unwrap_or_default();
            let reply = call(
                &endpoint,
                RequestBody::ExecProcess(ExecProcess {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    process: Box::new(process),
                    stdio: p.paths.wiring(),
                }),
            )?;
            if let ResponseBody::Pid(pid) = reply {
                p.pid = pid as u32;
            }
            let attached =
                stdio::attach(&endpoint, &req.id, Some(&req.exec_id), &p.paths, &namespace)
                    .map_err(internal)?;
            p.stdin = attached.stdin.as_ref().and_then(|s| s.try_clone().ok());
            Some(attached)
        };
        p.state = State::Running;
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
        self.watch_exit(endpoint, req.id.clone(), req.exec_id.clone(), attached);
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut pod = self.pod();
        let endpoint = pod.endpoint().ok();
        let p = pod.proc_mut(&req.id, &req.exec_id)?;
        if p.state == State::Running {
            return Err(failed(format!(
                "{} {} is running; kill it first",
                req.id, req.exec_id
            )));
        }
        let response = api::DeleteResponse {
            pid: p.pid,
            exit_status: p.exit_status,
            exited_at: MessageField::from_option(p.exited_at.clone().or_else(|| Some(now()))),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            if let Some(c) = pod.containers.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
            return Ok(response);
        }
        if let Some(endpoint) = &endpoint {
            let _ = call(
                endpoint,
                RequestBody::RemoveContainer {
                    container_id: req.id.clone(),
                },
            );
        }
        if let Some(c) = pod.containers.remove(&req.id) {
            let _ = std::fs::remove_file(Path::new(&c.bundle).join(SANDBOX_NOTE));
            if let Some(vm) = &pod.vm {
                binds::unshare(&vm.shared, &c.shared);
            }
        }
        drop(pod);
        self.inner.changed.notify_all();
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

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let endpoint = {
            let pod = self.pod();
            if !pod.containers.contains_key(&req.id) {
                return Err(not_found(format!("container {}", req.id)));
            }
            pod.endpoint()?
        };
        let pids = match call(
            &endpoint,
            RequestBody::Stats {
                container_id: req.id.clone(),
            },
        )? {
            ResponseBody::Stats(s) => s.pids,
            _ => Vec::new(),
        };
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

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true)?;
        self.publish(TaskPaused {
            container_id: req.id,
            ..Default::default()
        });
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false)?;
        self.publish(TaskResumed {
            container_id: req.id,
            ..Default::default()
        });
        Ok(api::Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "checkpoint is not implemented by vmpod: a container's state lives in its VM",
        ))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let mut pod = self.pod();
        let endpoint = pod.endpoint()?;
        let p = pod.proc_mut(&req.id, &req.exec_id)?;
        if p.state == State::Stopped {
            return Err(not_found(format!(
                "{} {}: process already finished",
                req.id, req.exec_id
            )));
        }
        if p.state == State::Created && !req.exec_id.is_empty() {
            // An exec that never started has no process to signal: it is done.
            p.state = State::Stopped;
            p.exit_status = 128 + req.signal;
            p.exited_at = Some(now());
            drop(pod);
            self.inner.changed.notify_all();
            return Ok(api::Empty::new());
        }
        // A container killed before Start (the CRI's clean-up of a failed start) still exits:
        // its waiter starts now, so Wait returns.
        let unstarted = (p.state == State::Created).then(|| p.attached.take());
        drop(pod);
        if let Some(attached) = unstarted {
            self.watch_exit(endpoint.clone(), req.id.clone(), String::new(), attached);
        }
        call(
            &endpoint,
            RequestBody::SignalProcess {
                container_id: req.id.clone(),
                exec_id: (!req.exec_id.is_empty()).then(|| req.exec_id.clone()),
                signal: req.signal as i32,
                all: req.all,
            },
        )?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let mut process: Process = serde_json::from_slice(&req.spec.value).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("exec {} process spec: {e}", req.exec_id),
            )
        })?;
        process.set_terminal(Some(req.terminal));
        let paths = Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        paths
            .validate()
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let mut pod = self.pod();
        let c = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(format!("container {}", req.id)))?;
        if c.init.state != State::Running {
            return Err(failed(format!("container {} is not running", req.id)));
        }
        if c.execs.contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        c.execs
            .insert(req.exec_id.clone(), Proc::new(paths, Some(process)));
        drop(pod);
        self.publish(TaskExecAdded {
            container_id: req.id,
            exec_id: req.exec_id,
            ..Default::default()
        });
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let endpoint = self.pod().endpoint()?;
        call(
            &endpoint,
            RequestBody::ResizePty {
                container_id: req.id.clone(),
                exec_id: (!req.exec_id.is_empty()).then(|| req.exec_id.clone()),
                rows: req.height.min(u32::from(u16::MAX)) as u16,
                cols: req.width.min(u32::from(u16::MAX)) as u16,
            },
        )?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let mut pod = self.pod();
        let p = pod.proc_mut(&req.id, &req.exec_id)?;
        if let Some(stdin) = p.stdin.take() {
            let _ = stdin.shutdown(std::net::Shutdown::Write);
        }
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources: LinuxResources = serde_json::from_slice(&req.resources.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        let endpoint = self.pod().endpoint()?;
        call(
            &endpoint,
            RequestBody::UpdateResources {
                container_id: req.id,
                resources: Box::new(resources),
            },
        )?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut pod = self.pod();
        loop {
            let p = pod.proc_mut(&req.id, &req.exec_id)?;
            if p.state == State::Stopped {
                return Ok(api::WaitResponse {
                    exit_status: p.exit_status,
                    exited_at: MessageField::from_option(p.exited_at.clone()),
                    ..Default::default()
                });
            }
            pod = self
                .inner
                .changed
                .wait(pod)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let endpoint = self.pod().endpoint()?;
        let stats = match call(
            &endpoint,
            RequestBody::Stats {
                container_id: req.id,
            },
        )? {
            ResponseBody::Stats(s) => s,
            other => return Err(internal(format!("unexpected reply {other:?}"))),
        };
        let any = containerd_shim::util::convert_to_any(Box::new(metrics::from_stats(&stats)))
            .map_err(|e| internal(e.to_string()))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let mut pod = self.pod();
        let c = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(format!("container {}", req.id)))?;
        let (bundle, paused) = (c.bundle.clone(), c.paused);
        let p = if req.exec_id.is_empty() {
            &c.init
        } else {
            c.execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(format!("exec {}", req.exec_id)))?
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid,
            status: EnumOrUnknown::new(Self::state_of(p, paused)),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: p.exit_status,
            exited_at: MessageField::from_option(p.exited_at.clone()),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut pod = self.pod();
        let pid = pod.proc_mut(&req.id, "").map(|p| p.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let mut pod = self.pod();
        // One shim serves the whole pod: it stays while any container does.
        if !pod.containers.is_empty() {
            return Ok(api::Empty::new());
        }
        let vm = pod.stop_vm();
        drop(pod);
        // Answered at once; the shim exits once the VM is down (containerd waits a few
        // seconds at most for this reply).
        let exit = self.inner.exit.clone();
        std::thread::spawn(move || {
            drop(vm);
            exit.signal();
        });
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_vm_is_sized_from_the_first_containers_resources() {
        assert_eq!(vm_size(&Spec::default()), (1, DEFAULT_VM_MIB as u32));
        let s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"resources":{"memory":{"limit":536870912},"cpu":{"quota":150000,"period":100000}}}}"#,
        );
        assert_eq!(vm_size(&s), (2, 512 + VM_OVERHEAD_MIB as u32));
    }

    #[test]
    fn host_namespace_paths_are_dropped_and_the_netns_kept_for_the_vm() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"},{"type":"ipc","path":"/proc/42/ns/ipc"}]}}"#,
        );
        assert_eq!(
            adapt_spec(&mut s).unwrap(),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        let namespaces = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(namespaces.iter().all(|n| n.path().is_none()));
        assert_eq!(namespaces.len(), 3);
    }
}
