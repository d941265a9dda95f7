//! The messages. JSON keeps them readable in logs and carries the OCI types as the OCI specs
//! define them (see ARCHITECTURE.md, "Decisions").

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::{Deserialize, Serialize};

/// A host → agent frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host; the response carries it back. Responses may come out of order:
    /// a `WaitProcess` is answered when the process exits.
    pub id: u64,
    pub body: RequestBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum RequestBody {
    /// Must be the first request on a control connection.
    Hello {
        version: u32,
    },
    CreateContainer(CreateContainer),
    StartContainer {
        container_id: String,
    },
    ExecProcess(ExecProcess),
    /// `exec_id: None` is the container's init process; `all` signals every process in it.
    SignalProcess {
        container_id: String,
        exec_id: Option<String>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Answered when the process has exited and its stdout/stderr have been delivered.
    WaitProcess {
        container_id: String,
        exec_id: Option<String>,
    },
    ResizePty {
        container_id: String,
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    CloseStdin {
        container_id: String,
        exec_id: Option<String>,
    },
    PauseContainer {
        container_id: String,
    },
    ResumeContainer {
        container_id: String,
    },
    Stats {
        container_id: String,
    },
    UpdateResources {
        container_id: String,
        resources: Box<LinuxResources>,
    },
    RemoveContainer {
        container_id: String,
    },
    SetupNetwork(NetworkConfig),
    SetTime {
        unix_secs: i64,
        nanos: u32,
    },
    /// Mixed into the guest kernel's pool and credited, e.g. after restoring a snapshot.
    AddEntropy {
        bytes: Vec<u8>,
    },
    /// The VM's hostname and /etc/machine-id: per sandbox, so clones of one template differ.
    SetIdentity {
        hostname: String,
        machine_id: String,
    },
    /// Stops every container and powers the VM off once every client has closed its control
    /// connection (two seconds at most): until the host has read the reply, it may still be in
    /// the guest's socket buffers, which a power-off loses.
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateContainer {
    pub container_id: String,
    /// The OCI runtime spec; `root.path` is ignored, the rootfs comes from `rootfs`.
    pub spec: Box<Spec>,
    pub rootfs: Rootfs,
    pub stdio: StdioWiring,
    /// docker's `USER`: NAME or UID, optionally `:GROUP` or `:GID`, looked up in the
    /// container's own /etc/passwd and /etc/group once its rootfs is assembled; it replaces
    /// `spec.process.user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The pod's sandbox (the CRI's pause container): it brings no image (`rootfs.layers` is
    /// empty), and the agent runs its own pause process in an empty root, in the namespaces
    /// the spec asks for. The pod's other containers join those by `/proc/PID/ns/…` paths.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pod_sandbox: bool,
}

impl CreateContainer {
    /// A container of no pod, run as the spec's user: what tools and tests create.
    pub fn new(
        container_id: impl Into<String>,
        spec: Spec,
        rootfs: Rootfs,
        stdio: StdioWiring,
    ) -> CreateContainer {
        CreateContainer {
            container_id: container_id.into(),
            spec: Box::new(spec),
            rootfs,
            stdio,
            user: None,
            pod_sandbox: false,
        }
    }
}

/// A container's root filesystem, assembled by the agent from the VM's disks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rootfs {
    /// Serials of read-only (erofs) layer disks, lowest layer first.
    pub layers: Vec<String>,
    pub upper: Upper,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Upper {
    /// A tmpfs in guest memory, gone with the container.
    Tmpfs,
    /// An ext4 scratch disk with this serial.
    Disk { serial: String },
}

/// Which stdio streams the host will open on [`crate::STDIO_PORT`]. A stream not asked for
/// is /dev/null in the container; one asked for must be opened, since the process's exit is
/// reported only once its stdout and stderr have been delivered (until then they wait in the
/// pipe, and a process that fills it waits too). With a terminal, `stdout` carries the pty and `stderr` is
/// unused.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StdioWiring {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl StdioWiring {
    /// Only stdout reaches the host.
    pub const STDOUT_ONLY: StdioWiring = StdioWiring {
        stdin: false,
        stdout: true,
        stderr: false,
    };
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecProcess {
    pub container_id: String,
    pub exec_id: String,
    pub process: Box<Process>,
    pub stdio: StdioWiring,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkConfig {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    /// The guest interface, found by MAC address ("06:00:…").
    pub mac: String,
    /// IPv4 addresses in CIDR form ("10.0.0.2/24").
    pub addresses: Vec<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    /// "default" or a CIDR.
    pub destination: String,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// Which of a container's stdio streams a connection to [`crate::STDIO_PORT`] carries; the
/// first (and only) frame on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StdioHello {
    pub container_id: String,
    pub exec_id: Option<String>,
    pub stream: StdStream,
}

/// Which TCP port inside the VM a connection to [`crate::FORWARD_PORT`] goes to; the first
/// (and only) frame on it, raw bytes both ways after it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardHello {
    pub port: u16,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum StdStream {
    Stdin,
    Stdout,
    Stderr,
}

/// An agent → host frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMessage {
    Response(Response),
    Event(Event),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub result: Result<ResponseBody, ErrorReply>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseBody {
    Hello {
        version: u32,
        agent_version: String,
    },
    Done,
    /// The pid (in the VM) of the process just created or started.
    Pid(i32),
    Exited(ProcessExit),
    Stats(ContainerStats),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.kind)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request cannot be read or is invalid as written.
    BadRequest,
    /// No container or process with that id.
    NotFound,
    AlreadyExists,
    /// The container is not in a state that allows this (e.g. start twice).
    InvalidState,
    /// The protocol versions differ.
    VersionMismatch,
    /// The request was fine; the guest failed to carry it out.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    ProcessExited(ProcessExit),
    /// The kernel's OOM killer struck in the container (whether or not a process exited).
    Oom {
        container_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessExit {
    pub container_id: String,
    pub exec_id: Option<String>,
    /// The shell's convention: the exit code, or 128 + the signal that killed it.
    pub status: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Guest wall-clock time of the exit (the host sets it with SetTime).
    pub exited_at_unix_nanos: u128,
}

/// cgroup v2 figures of one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_throttled_usec: u64,
    pub memory_current: u64,
    /// `None` when unlimited.
    pub memory_limit: Option<u64>,
    pub memory_oom_kills: u64,
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    /// The container's processes (pids in the VM), as its cgroup lists them.
    #[serde(default)]
    pub pids: Vec<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode, FrameDecoder};

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(m: &T) -> T {
        let bytes = encode(m).unwrap();
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        decode(&d.next_frame().unwrap().unwrap()).unwrap()
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let create = Request {
            id: 7,
            body: RequestBody::CreateContainer(CreateContainer {
                container_id: "c1".into(),
                spec: Box::default(),
                rootfs: Rootfs {
                    layers: vec!["l0".into(), "l1".into()],
                    upper: Upper::Tmpfs,
                },
                stdio: StdioWiring {
                    stdin: true,
                    stdout: true,
                    stderr: false,
                },
                user: Some("app:wheel".into()),
                pod_sandbox: false,
            }),
        };
        let back = round_trip(&create);
        assert_eq!(back.id, 7);
        let RequestBody::CreateContainer(c) = back.body else {
            panic!("wrong variant")
        };
        assert_eq!(c.rootfs.layers, ["l0", "l1"]);
        assert_eq!(c.user.as_deref(), Some("app:wheel"));
        assert!(c.stdio.stdin && !c.stdio.stderr);

        let exit = AgentMessage::Event(Event::ProcessExited(ProcessExit {
            container_id: "c1".into(),
            exec_id: None,
            status: 137,
            signal: Some(9),
            oom_killed: true,
            exited_at_unix_nanos: 1,
        }));
        let AgentMessage::Event(Event::ProcessExited(e)) = round_trip(&exit) else {
            panic!("wrong variant")
        };
        assert_eq!((e.status, e.signal, e.oom_killed), (137, Some(9), true));

        let err = AgentMessage::Response(Response {
            id: 3,
            result: Err(ErrorReply {
                kind: ErrorKind::NotFound,
                message: "no container x".into(),
            }),
        });
        let AgentMessage::Response(r) = round_trip(&err) else {
            panic!("wrong variant")
        };
        assert_eq!(r.result.unwrap_err().kind, ErrorKind::NotFound);
    }

    #[test]
    fn unknown_operation_is_a_malformed_message() {
        let err = decode::<Request>(br#"{"id":1,"body":{"op":"format_disk"}}"#).unwrap_err();
        let cause = std::error::Error::source(&err).map(|c| c.to_string());
        assert!(cause.unwrap_or_default().contains("format_disk"), "{err}");
    }
}
