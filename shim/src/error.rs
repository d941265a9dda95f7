//! The task service's one error, and how containerd hears it: a ttrpc status whose code names
//! the kind of failure and whose message is the whole cause chain, so that containerd (and the
//! user reading its log) learns why the agent could not be reached, not only that it could not.

use containerd_shim::protos::ttrpc::{self, Code};
use std::path::PathBuf;
use vmpod_protocol::{ClientError, ErrorKind};
use vmpod_sandbox::error::SandboxError;

/// A request to a VM's agent that failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reach the agent")]
    Connect(#[source] SandboxError),
    #[error(transparent)]
    Call(#[from] ClientError),
}

impl AgentError {
    /// What the agent said of the request, when it refused it.
    pub fn refusal(&self) -> Option<ErrorKind> {
        match self {
            AgentError::Call(ClientError::Refused(reply)) => Some(reply.kind),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A request containerd should not have sent as it is (stdio strings, rootfs mounts, binds).
    #[error("{0}")]
    Invalid(String),
    #[error("{}", path.display())]
    Spec {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("exec {exec_id} process spec")]
    ExecSpec {
        exec_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("resources")]
    Resources(#[source] serde_json::Error),
    #[error("container {0}: not found")]
    NoContainer(String),
    #[error("exec {exec_id} in {container_id}: not found")]
    NoExec {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0} exists")]
    ContainerExists(String),
    #[error("exec {0} exists")]
    ExecExists(String),
    #[error("the pod's VM is not running")]
    VmNotRunning,
    #[error("{container_id} {exec_id} was started already")]
    StartedAlready {
        container_id: String,
        exec_id: String,
    },
    #[error("{container_id} {exec_id} is running; kill it first")]
    StillRunning {
        container_id: String,
        exec_id: String,
    },
    #[error("{container_id} {exec_id}: process already finished")]
    Finished {
        container_id: String,
        exec_id: String,
    },
    #[error("container {0} is not running")]
    ContainerNotRunning(String),
    #[error("container {container_id}: attach its image layer {} to the pod's VM: {reason}", layer.display())]
    AttachLayer {
        container_id: String,
        layer: PathBuf,
        reason: String,
    },
    #[error("container {container_id} of pod {sandbox_id}: the pod's sandbox container was not created in this shim")]
    NoSandbox {
        container_id: String,
        sandbox_id: String,
    },
    #[error("the pod's host cgroup")]
    HostCgroup(#[source] crate::host_cgroup::CgroupError),
    #[error("{variable}={value}: {expected}")]
    Knob {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("checkpoint is not implemented by vmpod: a container's state lives in its VM")]
    CheckpointUnsupported,
    #[error(transparent)]
    Hypervisor(SandboxError),
    #[error("start the pod's VM: {0}")]
    Boot(String),
    /// The rootfs's layers could not be made into disks.
    #[error("{0}")]
    Layers(String),
    /// The process's stdio could not be joined to the agent's streams.
    #[error("{0}")]
    Stdio(String),
    #[error(transparent)]
    Metrics(containerd_shim::Error),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl TaskError {
    /// The ttrpc code containerd acts on (CRI retries, `ctr` messages).
    pub fn code(&self) -> Code {
        match self {
            TaskError::Invalid(_)
            | TaskError::Spec { .. }
            | TaskError::ExecSpec { .. }
            | TaskError::Resources(_) => Code::INVALID_ARGUMENT,
            TaskError::NoContainer(_) | TaskError::NoExec { .. } | TaskError::Finished { .. } => {
                Code::NOT_FOUND
            }
            TaskError::ContainerExists(_) | TaskError::ExecExists(_) => Code::ALREADY_EXISTS,
            TaskError::VmNotRunning
            | TaskError::StartedAlready { .. }
            | TaskError::StillRunning { .. }
            | TaskError::ContainerNotRunning(_)
            | TaskError::NoSandbox { .. } => Code::FAILED_PRECONDITION,
            TaskError::Knob { .. } => Code::INVALID_ARGUMENT,
            TaskError::CheckpointUnsupported => Code::UNIMPLEMENTED,
            TaskError::Agent(e) => match e.refusal() {
                Some(ErrorKind::NotFound) => Code::NOT_FOUND,
                Some(ErrorKind::BadRequest) => Code::INVALID_ARGUMENT,
                Some(ErrorKind::AlreadyExists) => Code::ALREADY_EXISTS,
                Some(ErrorKind::InvalidState) => Code::FAILED_PRECONDITION,
                _ => Code::UNKNOWN,
            },
            TaskError::Hypervisor(_)
            | TaskError::AttachLayer { .. }
            | TaskError::HostCgroup(_)
            | TaskError::Boot(_)
            | TaskError::Layers(_)
            | TaskError::Stdio(_)
            | TaskError::Metrics(_) => Code::UNKNOWN,
        }
    }
}

/// The status containerd receives: the code, and the error with every cause after it.
impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), vmpod_sandbox::error::chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_protocol::frame::FrameError;
    use vmpod_protocol::ErrorReply;

    fn status(e: TaskError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    fn refused(kind: ErrorKind) -> TaskError {
        TaskError::Agent(AgentError::Call(ClientError::Refused(ErrorReply {
            kind,
            message: "no container c1".into(),
        })))
    }

    #[test]
    fn containerd_hears_why_the_agent_could_not_be_reached() {
        let unreachable = AgentError::Connect(SandboxError::Io {
            what: "connect to /run/vmpod/x/vsock.sock".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        let (code, message) = status(unreachable.into());
        assert_eq!(code, Code::UNKNOWN);
        assert!(
            message
                .starts_with("reach the agent: connect to /run/vmpod/x/vsock.sock: No such file"),
            "{message}"
        );

        let broken = AgentError::Call(ClientError::Frame(FrameError::Io(
            std::io::Error::from_raw_os_error(libc::EPIPE),
        )));
        let (_, message) = status(broken.into());
        assert!(
            message.starts_with("agent connection: connection I/O: Broken pipe"),
            "{message}"
        );
    }

    #[test]
    fn the_agents_refusals_keep_their_kind() {
        assert_eq!(status(refused(ErrorKind::NotFound)).0, Code::NOT_FOUND);
        assert_eq!(
            status(refused(ErrorKind::BadRequest)).0,
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            status(refused(ErrorKind::AlreadyExists)).0,
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            status(refused(ErrorKind::InvalidState)).0,
            Code::FAILED_PRECONDITION
        );
        assert_eq!(status(refused(ErrorKind::Failed)).0, Code::UNKNOWN);
        assert_eq!(
            status(refused(ErrorKind::VersionMismatch)).1,
            "the agent refused: no container c1 (VersionMismatch)"
        );
    }

    #[test]
    fn a_spec_that_cannot_be_read_names_its_file_and_cause() {
        let source = std::io::Error::from_raw_os_error(libc::ENOENT);
        let (code, message) = status(TaskError::Spec {
            path: "/b/config.json".into(),
            source: Box::new(source),
        });
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            message.starts_with("/b/config.json: No such file"),
            "{message}"
        );
    }
}
