//! The task service against a fake agent, a fake host and recorded events: no VM is booted.
//!
//! (Over 600 lines: the task service's unit tests, apart from the service itself.)

use super::*;
use crate::agent::{Agent, Hangup, OomEvents};
use crate::boot::PodVm;
use crate::error::AgentError;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::Status;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::Duration;
use vmpod_protocol::{ClientError, ContainerStats, ErrorKind, ErrorReply};

/// Long enough for a thread to be scheduled, short enough that a hang fails the test.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct RecordedEvents(Mutex<Vec<(String, String)>>);

impl EventSink for RecordedEvents {
    fn publish(&self, event: crate::events::Message) {
        // The protobuf text form: `container_id: "c1" exit_status: 3 ...`.
        let record = (event.topic(), event.to_string());
        self.0.lock().unwrap().push(record);
    }
}

impl RecordedEvents {
    fn topics(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn text_of(&self, topic: &str) -> String {
        let events = self.0.lock().unwrap();
        let found = events.iter().find(|(t, _)| t == topic);
        found.map(|(_, text)| text.clone()).unwrap_or_default()
    }
}

/// Processes "run" until the test (or a signal) ends them.
#[derive(Default)]
struct FakeAgent {
    calls: Mutex<Vec<String>>,
    exits: Mutex<HashMap<String, u32>>,
    exited: Condvar,
    refuse_create: Option<ErrorKind>,
    oom_kills: Vec<String>,
    /// Every CreateContainer as the guest would receive it.
    created: Mutex<Vec<CreateContainer>>,
    hung_up: Arc<AtomicBool>,
}

fn key(container_id: &str, exec_id: Option<&str>) -> String {
    format!("{container_id}/{}", exec_id.unwrap_or(""))
}

impl FakeAgent {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn exit(&self, container_id: &str, exec_id: Option<&str>, status: u32) {
        let key = key(container_id, exec_id);
        self.exits.lock().unwrap().insert(key, status);
        self.exited.notify_all();
    }
}

impl Agent for FakeAgent {
    fn create(&self, request: CreateContainer) -> Result<u32, AgentError> {
        self.record(format!("create {}", request.container_id));
        self.created.lock().unwrap().push(request.clone());
        match self.refuse_create {
            Some(kind) => Err(AgentError::Call(ClientError::Refused(ErrorReply {
                kind,
                message: "bad spec".into(),
            }))),
            None => Ok(42),
        }
    }

    fn start(&self, container_id: &str) -> Result<(), AgentError> {
        self.record(format!("start {container_id}"));
        Ok(())
    }

    fn exec(&self, request: ExecProcess) -> Result<Option<u32>, AgentError> {
        self.record(format!("exec {} {}", request.container_id, request.exec_id));
        Ok(Some(43))
    }

    fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32, AgentError> {
        self.record(format!("wait {}", key(container_id, exec_id)));
        let key = key(container_id, exec_id);
        let exits = self.exits.lock().unwrap();
        let (exits, _) = self
            .exited
            .wait_timeout_while(exits, PATIENCE, |e| !e.contains_key(&key))
            .unwrap();
        exits
            .get(&key)
            .copied()
            .ok_or(AgentError::Call(ClientError::Closed))
    }

    fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        _all: bool,
    ) -> Result<(), AgentError> {
        self.record(format!("signal {} {signal}", key(container_id, exec_id)));
        if signal == libc::SIGKILL {
            self.exit(container_id, exec_id, 128 + signal as u32);
        }
        Ok(())
    }

    fn remove(&self, container_id: &str) -> Result<(), AgentError> {
        self.record(format!("remove {container_id}"));
        Ok(())
    }

    fn stats(&self, _container_id: &str) -> Result<ContainerStats, AgentError> {
        Ok(ContainerStats {
            pids: vec![1, 7],
            ..Default::default()
        })
    }

    fn update(&self, _container_id: &str, _resources: LinuxResources) -> Result<(), AgentError> {
        Ok(())
    }

    fn set_paused(&self, container_id: &str, paused: bool) -> Result<(), AgentError> {
        self.record(format!("paused {container_id} {paused}"));
        Ok(())
    }

    fn resize_pty(
        &self,
        _container_id: &str,
        _exec_id: Option<&str>,
        _rows: u16,
        _cols: u16,
    ) -> Result<(), AgentError> {
        Ok(())
    }

    fn attach(
        &self,
        _container_id: &str,
        _exec_id: Option<&str>,
        _paths: &Paths,
        _namespace: &str,
    ) -> Result<Attached, String> {
        Ok(Attached::default())
    }

    fn watch_oom(&self) -> Option<(OomEvents, Hangup)> {
        let hung_up = self.hung_up.clone();
        let hangup = move || hung_up.store(true, Ordering::SeqCst);
        Some((
            Box::new(self.oom_kills.clone().into_iter()),
            Box::new(hangup),
        ))
    }
}

struct FakeVm {
    agent: Arc<FakeAgent>,
    state_dir: PathBuf,
    layers: Vec<PathBuf>,
    slots: Arc<FakeSlots>,
    stopped: Arc<AtomicBool>,
}

/// Three spare disk slots; what was put in and taken out, in order.
#[derive(Default)]
struct FakeSlots {
    used: Mutex<Vec<Option<PathBuf>>>,
    log: Mutex<Vec<String>>,
}

impl FakeSlots {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl PodVm for FakeVm {
    fn agent(&self) -> Arc<dyn Agent> {
        self.agent.clone()
    }

    fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn layer_serial(&self, image: &Path) -> Option<String> {
        let i = self.layers.iter().position(|l| l == image)?;
        Some(format!("layer{i}"))
    }

    fn insert_layer(&self, image: &Path) -> Result<String, String> {
        let mut used = self.slots.used.lock().unwrap();
        used.resize(3, None);
        let free = used.iter().position(Option::is_none);
        let slot = free.ok_or("all 3 spare disk slots are in use")?;
        used[slot] = Some(image.to_path_buf());
        let log = format!("insert {} slot{slot}", image.display());
        self.slots.log.lock().unwrap().push(log);
        Ok(format!("slot{slot}"))
    }

    fn eject_layer(&self, serial: &str) {
        let slot: usize = serial.trim_start_matches("slot").parse().unwrap();
        self.slots.used.lock().unwrap()[slot] = None;
        self.slots
            .log
            .lock()
            .unwrap()
            .push(format!("eject {serial}"));
    }

    fn share_host_binds(&self, _spec: &mut Spec) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }

    fn unshare(&self, _guest_paths: &[String]) {}
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// Layer "images" are the directories themselves; every boot hands out the same agent.
struct FakeHost {
    agent: Arc<FakeAgent>,
    boots: AtomicUsize,
    plans: Mutex<Vec<VmPlan>>,
    slots: Arc<FakeSlots>,
    stopped: Arc<AtomicBool>,
}

impl VmHost for FakeHost {
    fn layer_images(&self, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, TaskError> {
        Ok(dirs.to_vec())
    }

    fn boot(&self, plan: VmPlan) -> Result<Box<dyn PodVm>, TaskError> {
        self.boots.fetch_add(1, Ordering::SeqCst);
        self.plans.lock().unwrap().push(plan.clone());
        Ok(Box::new(FakeVm {
            agent: self.agent.clone(),
            state_dir: "/run/vmpod/fake".into(),
            layers: plan.layers,
            slots: self.slots.clone(),
            stopped: self.stopped.clone(),
        }))
    }
}

struct Fixture {
    service: Arc<TaskService>,
    agent: Arc<FakeAgent>,
    host: Arc<FakeHost>,
    events: Arc<RecordedEvents>,
    exit: Arc<ExitSignal>,
    bundle: tempfile::TempDir,
}

fn fixture(agent: FakeAgent) -> Fixture {
    let agent = Arc::new(agent);
    let host = Arc::new(FakeHost {
        agent: agent.clone(),
        boots: AtomicUsize::new(0),
        plans: Mutex::default(),
        slots: Arc::default(),
        stopped: Arc::default(),
    });
    let events = Arc::new(RecordedEvents::default());
    let exit = Arc::new(ExitSignal::default());
    let service = Arc::new(TaskService::new(
        "k8s.io".into(),
        exit.clone(),
        events.clone(),
        host.clone(),
    ));
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}}"#,
    )
    .unwrap();
    Fixture {
        service,
        agent,
        host,
        events,
        exit,
        bundle,
    }
}

impl Fixture {
    /// A bundle of a CRI pod's container, its rootfs an overlay of `lower` (top first).
    fn create_in_pod(
        &self,
        id: &str,
        config: &str,
        lower: &str,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        let bundle = self.bundle.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), config).unwrap();
        let mut rootfs = Vec::new();
        if !lower.is_empty() {
            rootfs.push(containerd_shim::protos::types::mount::Mount {
                type_: "overlay".into(),
                source: "overlay".into(),
                options: vec![format!("lowerdir={lower}")],
                ..Default::default()
            });
        }
        self.service.task_create(&api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            rootfs,
            ..Default::default()
        })
    }

    fn create(&self, id: &str) -> Result<api::CreateTaskResponse, TaskError> {
        self.service.task_create(&api::CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle.path().display().to_string(),
            ..Default::default()
        })
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<api::StartResponse, TaskError> {
        self.service.task_start(&api::StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
    }

    fn exec(&self, id: &str, exec_id: &str) -> Result<(), TaskError> {
        let mut req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        req.spec.mut_or_insert_default().value =
            br#"{"cwd":"/","args":["ls"],"user":{"uid":0,"gid":0}}"#.to_vec();
        self.service.task_exec(&req)
    }

    fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, TaskError> {
        self.service.task_delete(&api::DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
    }

    fn status(&self, id: &str, exec_id: &str) -> Result<Status, TaskError> {
        let state = self.service.task_state(&api::StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })?;
        Ok(state.status.enum_value_or_default())
    }

    /// Wait, on a thread of its own so that a Wait that never returns fails the test.
    fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse, TaskError> {
        let (service, (tx, rx)) = (self.service.clone(), mpsc::channel());
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        std::thread::spawn(move || tx.send(service.task_wait(&req)));
        rx.recv_timeout(PATIENCE).expect("Wait did not return")
    }
}

/// The code containerd receives for the error.
fn code<T: std::fmt::Debug>(result: Result<T, TaskError>) -> Code {
    match ttrpc::Error::from(result.expect_err("the call was refused")) {
        ttrpc::Error::RpcStatus(status) => status.code(),
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn create_start_wait_delete_against_a_fake_agent_publishes_events_in_order() {
    let f = fixture(FakeAgent::default());
    assert_eq!(f.create("c1").unwrap().pid, 42);
    assert_eq!(f.status("c1", "").unwrap(), Status::CREATED);
    let note = f.bundle.path().join(SANDBOX_NOTE);
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "/run/vmpod/fake");

    assert_eq!(f.start("c1", "").unwrap().pid, 42);
    assert_eq!(f.status("c1", "").unwrap(), Status::RUNNING);
    assert_eq!(code(f.delete("c1", "")), Code::FAILED_PRECONDITION);

    f.agent.exit("c1", None, 3);
    assert_eq!(f.wait("c1", "").unwrap().exit_status, 3);
    assert_eq!(f.status("c1", "").unwrap(), Status::STOPPED);
    let deleted = f.delete("c1", "").unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (42, 3));
    assert_eq!(code(f.status("c1", "")), Code::NOT_FOUND);
    assert!(!note.exists(), "the bundle's sandbox note stayed");

    assert_eq!(
        f.events.topics(),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    let exit = f.events.text_of("/tasks/exit");
    assert!(exit.contains("exit_status: 3"), "{exit}");
    assert_eq!(
        f.agent.calls(),
        ["create c1", "start c1", "wait c1/", "remove c1"]
    );
    assert_eq!(f.host.boots.load(Ordering::SeqCst), 1);
}

#[test]
fn refusals_carry_containerds_codes() {
    let f = fixture(FakeAgent::default());
    assert_eq!(code(f.start("c1", "")), Code::FAILED_PRECONDITION);
    f.create("c1").unwrap();
    assert_eq!(code(f.create("c1")), Code::ALREADY_EXISTS);
    assert_eq!(f.host.boots.load(Ordering::SeqCst), 1);
    assert_eq!(code(f.start("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(f.delete("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(f.wait("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(f.status("c1", "e9")), Code::NOT_FOUND);
    assert_eq!(code(f.exec("c1", "e1")), Code::FAILED_PRECONDITION);
    f.start("c1", "").unwrap();
    assert_eq!(code(f.start("c1", "")), Code::FAILED_PRECONDITION);
    let checkpoint: Result<(), TaskError> = Err(TaskError::CheckpointUnsupported);
    assert_eq!(code(checkpoint), Code::UNIMPLEMENTED);
    f.agent.exit("c1", None, 0);
}

#[test]
fn an_exec_runs_beside_the_init_process_and_is_deleted_on_its_own() {
    let f = fixture(FakeAgent::default());
    f.create("c1").unwrap();
    f.start("c1", "").unwrap();
    f.exec("c1", "e1").unwrap();
    assert_eq!(code(f.exec("c1", "e1")), Code::ALREADY_EXISTS);
    assert_eq!(f.status("c1", "e1").unwrap(), Status::CREATED);
    assert_eq!(f.start("c1", "e1").unwrap().pid, 43);
    assert_eq!(code(f.delete("c1", "e1")), Code::FAILED_PRECONDITION);
    f.agent.exit("c1", Some("e1"), 2);
    assert_eq!(f.wait("c1", "e1").unwrap().exit_status, 2);
    assert_eq!(f.delete("c1", "e1").unwrap().exit_status, 2);
    assert_eq!(code(f.status("c1", "e1")), Code::NOT_FOUND);
    assert_eq!(f.status("c1", "").unwrap(), Status::RUNNING);

    // An exec killed before it starts is done without reaching the guest.
    f.exec("c1", "e2").unwrap();
    let kill = api::KillRequest {
        id: "c1".into(),
        exec_id: "e2".into(),
        signal: libc::SIGTERM as u32,
        ..Default::default()
    };
    f.service.task_kill(&kill).unwrap();
    assert_eq!(f.wait("c1", "e2").unwrap().exit_status, 128 + 15);
    assert_eq!(code(f.service.task_kill(&kill)), Code::NOT_FOUND);
    f.agent.exit("c1", None, 0);

    let topics = f.events.topics();
    let exec_topics: Vec<_> = topics.iter().filter(|t| t.contains("exec")).collect();
    assert_eq!(
        exec_topics,
        [
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exec-added"
        ]
    );
    assert!(f.agent.calls().contains(&"exec c1 e1".to_string()));
}

#[test]
fn a_container_killed_before_start_still_exits_so_wait_returns() {
    let f = fixture(FakeAgent::default());
    f.create("c1").unwrap();
    f.service
        .task_kill(&api::KillRequest {
            id: "c1".into(),
            signal: libc::SIGKILL as u32,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(f.wait("c1", "").unwrap().exit_status, 137);
    f.delete("c1", "").unwrap();
    assert_eq!(
        f.events.topics(),
        ["/tasks/create", "/tasks/exit", "/tasks/delete"]
    );
}

#[test]
fn a_create_the_agent_refuses_stops_the_vm_it_booted() {
    let f = fixture(FakeAgent {
        refuse_create: Some(ErrorKind::BadRequest),
        ..Default::default()
    });
    assert_eq!(code(f.create("c1")), Code::INVALID_ARGUMENT);
    assert!(f.host.stopped.load(Ordering::SeqCst), "the VM was kept");
    assert!(f.agent.hung_up.load(Ordering::SeqCst));
    assert!(f.events.topics().is_empty());
    assert!(!f.bundle.path().join(SANDBOX_NOTE).exists());
}

#[test]
fn oom_kills_are_published_and_shutdown_stops_the_vm_once_the_pod_is_empty() {
    let f = fixture(FakeAgent {
        oom_kills: vec!["c1".into()],
        ..Default::default()
    });
    f.create("c1").unwrap();
    f.service.task_shutdown();
    assert!(
        !f.host.stopped.load(Ordering::SeqCst),
        "stopped with c1 in it"
    );
    f.delete("c1", "").unwrap();
    f.service.task_shutdown();
    let (tx, rx) = mpsc::channel();
    let exit = f.exit.clone();
    std::thread::spawn(move || {
        exit.wait();
        let _ = tx.send(());
    });
    rx.recv_timeout(PATIENCE)
        .expect("the shim was not told to exit");
    assert!(f.host.stopped.load(Ordering::SeqCst));
    assert!(f.agent.hung_up.load(Ordering::SeqCst));
    // The OOM watcher publishes on a thread of its own.
    let published = std::time::Instant::now() + PATIENCE;
    while f.events.text_of("/tasks/oom").is_empty() && std::time::Instant::now() < published {
        std::thread::sleep(Duration::from_millis(10));
    }
    let oom = f.events.text_of("/tasks/oom");
    assert!(oom.contains("container_id: \"c1\""), "{oom}");
}

#[test]
fn pids_and_pause_reach_the_agent() {
    let f = fixture(FakeAgent::default());
    f.create("c1").unwrap();
    f.start("c1", "").unwrap();
    let pids = f
        .service
        .task_pids(&api::PidsRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .unwrap();
    let pids: Vec<u32> = pids.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [1, 7]);
    f.service.task_set_paused("c1", true).unwrap();
    assert_eq!(f.status("c1", "").unwrap(), Status::PAUSED);
    f.service.task_set_paused("c1", false).unwrap();
    assert_eq!(f.status("c1", "").unwrap(), Status::RUNNING);
    assert!(f
        .events
        .topics()
        .ends_with(&["/tasks/paused".to_string(), "/tasks/resumed".to_string()]));
    f.agent.exit("c1", None, 0);
}

fn pod_config(kind: &str, extra: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2","process":{{"cwd":"/","args":["sh"],"user":{{"uid":0,"gid":0}}}},
            "annotations":{{"io.kubernetes.cri.container-type":"{kind}","io.kubernetes.cri.sandbox-id":"p1"}}{extra}}}"#
    )
}

#[test]
fn a_pods_sandbox_boots_its_vm_and_later_images_share_spare_slots() {
    let f = fixture(FakeAgent::default());
    let sandbox = pod_config(
        "sandbox",
        r#","mounts":[{"destination":"/dev/shm","type":"bind","source":"/c/sandboxes/p1/shm","options":["rbind","ro"]}],
            "linux":{"namespaces":[{"type":"ipc"},{"type":"uts"},{"type":"network","path":"/var/run/netns/cni-1"}]}"#,
    );
    // The pause image's rootfs is not taken into the VM.
    assert_eq!(f.create_in_pod("p1", &sandbox, "/l/pause").unwrap().pid, 42);
    let plans = f.host.plans.lock().unwrap().clone();
    assert_eq!(plans.len(), 1);
    assert!(plans[0].pod && plans[0].layers.is_empty());
    assert_eq!(plans[0].netns, Some("/var/run/netns/cni-1".into()));

    let app = pod_config(
        "container",
        r#","mounts":[{"destination":"/dev/shm","type":"bind","source":"/c/sandboxes/p1/shm","options":["rbind"]}],
            "linux":{"namespaces":[{"type":"ipc","path":"/proc/42/ns/ipc"},{"type":"uts","path":"/proc/42/ns/uts"},{"type":"pid"}]}"#,
    );
    f.create_in_pod("app", &app, "/l/a:/l/base").unwrap();
    f.create_in_pod("side", &app, "/l/b:/l/base").unwrap();
    assert_eq!(f.host.boots.load(Ordering::SeqCst), 1);
    // A fourth image finds no slot free and says so.
    let Err(full) = f.create_in_pod("third", &app, "/l/c:/l/base") else {
        panic!("a third image found a slot");
    };
    assert!(
        full.to_string().contains("all 3 spare disk slots"),
        "{full}"
    );
    assert!(full.to_string().contains("/l/c"), "{full}");

    let created = f.agent.created.lock().unwrap().clone();
    assert!(created[0].pod_sandbox && created[0].rootfs.layers.is_empty());
    assert_eq!(created[1].rootfs.layers, ["slot0", "slot1"]);
    assert_eq!(created[2].rootfs.layers, ["slot0", "slot2"]);
    assert!(!created[1].pod_sandbox);
    let shm = created[1].spec.mounts().clone().unwrap()[0].clone();
    assert_eq!(
        shm.source().as_deref(),
        Some(Path::new(vmpod_protocol::POD_SHM_DIR))
    );
    let ns = created[1]
        .spec
        .linux()
        .clone()
        .unwrap()
        .namespaces()
        .clone();
    let ipc = ns.unwrap()[0].path().clone();
    assert_eq!(ipc, Some(PathBuf::from("/proc/42/ns/ipc")));

    // Only the slots the sidecar alone used are emptied with it; the shared base goes last.
    for id in ["app", "side"] {
        f.agent.exit(id, None, 0);
    }
    f.delete("side", "").unwrap();
    f.delete("app", "").unwrap();
    assert_eq!(
        f.host.slots.log(),
        [
            "insert /l/base slot0",
            "insert /l/a slot1",
            "insert /l/b slot2",
            "eject slot2",
            "eject slot0",
            "eject slot1",
        ]
    );
    f.agent.exit("p1", None, 137);
}

#[test]
fn a_pod_container_without_its_sandbox_is_refused() {
    let f = fixture(FakeAgent::default());
    let err = f.create_in_pod("app", &pod_config("container", ""), "/l/a");
    assert_eq!(code(err), Code::FAILED_PRECONDITION);
    assert_eq!(f.host.boots.load(Ordering::SeqCst), 0);
}
