//! What the task service needs of a VM's agent, as a trait, so the service runs against a fake
//! in tests; [`EndpointAgent`] is the real one, one control connection per request.

use crate::error::AgentError;
use crate::stdio::{self, Attached, Paths};
use oci_spec::runtime::LinuxResources;
use std::os::unix::net::UnixStream;
use vmpod_protocol::{
    Client, ContainerStats, CreateContainer, Event, ExecProcess, RequestBody, ResponseBody,
};
use vmpod_sandbox::Endpoint;

/// The ids of containers the guest killed for want of memory, as the agent pushes them.
pub type OomEvents = Box<dyn Iterator<Item = String> + Send>;
/// Closes a watching connection: the agent powers off only once its clients hang up.
pub type Hangup = Box<dyn FnOnce() + Send>;

pub trait Agent: Send + Sync {
    /// Creates the container; its pid in the VM (0 when the agent gives none).
    fn create(&self, request: CreateContainer) -> Result<u32, AgentError>;
    fn start(&self, container_id: &str) -> Result<(), AgentError>;
    /// Starts an exec; its pid in the VM, when the agent gives one.
    fn exec(&self, request: ExecProcess) -> Result<Option<u32>, AgentError>;
    /// Waits (on a connection of its own) until the process exits; its exit status.
    fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32, AgentError>;
    fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), AgentError>;
    fn remove(&self, container_id: &str) -> Result<(), AgentError>;
    fn stats(&self, container_id: &str) -> Result<ContainerStats, AgentError>;
    fn update(&self, container_id: &str, resources: LinuxResources) -> Result<(), AgentError>;
    /// Freezes or thaws the container's cgroup.
    fn set_paused(&self, container_id: &str, paused: bool) -> Result<(), AgentError>;
    fn resize_pty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), AgentError>;
    /// Joins the process's stdio to containerd's (`namespace` is for logging binaries).
    fn attach(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        paths: &Paths,
        namespace: &str,
    ) -> Result<Attached, String>;
    /// OOM kills as they happen, until the connection is hung up; None when none can be had.
    fn watch_oom(&self) -> Option<(OomEvents, Hangup)>;
}

/// The agent of a running VM, through its vsock endpoint.
pub struct EndpointAgent {
    endpoint: Endpoint,
}

impl EndpointAgent {
    pub fn new(endpoint: Endpoint) -> EndpointAgent {
        EndpointAgent { endpoint }
    }

    fn connect(&self) -> Result<Client<UnixStream>, AgentError> {
        self.endpoint.control().map_err(AgentError::Connect)
    }

    fn call(&self, body: RequestBody) -> Result<ResponseBody, AgentError> {
        Ok(self.connect()?.call(body)?)
    }
}

impl Agent for EndpointAgent {
    fn create(&self, request: CreateContainer) -> Result<u32, AgentError> {
        match self.call(RequestBody::CreateContainer(request))? {
            ResponseBody::Pid(pid) => Ok(pid as u32),
            _ => Ok(0),
        }
    }

    fn start(&self, container_id: &str) -> Result<(), AgentError> {
        self.call(RequestBody::StartContainer {
            container_id: container_id.into(),
        })?;
        Ok(())
    }

    fn exec(&self, request: ExecProcess) -> Result<Option<u32>, AgentError> {
        match self.call(RequestBody::ExecProcess(request))? {
            ResponseBody::Pid(pid) => Ok(Some(pid as u32)),
            _ => Ok(None),
        }
    }

    fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32, AgentError> {
        let exit = self.connect()?.wait(container_id, exec_id)?;
        Ok(exit.status as u32)
    }

    fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), AgentError> {
        self.call(RequestBody::SignalProcess {
            container_id: container_id.into(),
            exec_id: exec_id.map(str::to_string),
            signal,
            all,
        })?;
        Ok(())
    }

    fn remove(&self, container_id: &str) -> Result<(), AgentError> {
        self.call(RequestBody::RemoveContainer {
            container_id: container_id.into(),
        })?;
        Ok(())
    }

    fn stats(&self, container_id: &str) -> Result<ContainerStats, AgentError> {
        match self.call(RequestBody::Stats {
            container_id: container_id.into(),
        })? {
            ResponseBody::Stats(stats) => Ok(stats),
            other => Err(vmpod_protocol::ClientError::UnexpectedReply(Box::new(other)).into()),
        }
    }

    fn update(&self, container_id: &str, resources: LinuxResources) -> Result<(), AgentError> {
        self.call(RequestBody::UpdateResources {
            container_id: container_id.into(),
            resources: Box::new(resources),
        })?;
        Ok(())
    }

    fn set_paused(&self, container_id: &str, paused: bool) -> Result<(), AgentError> {
        let container_id = container_id.to_string();
        self.call(if paused {
            RequestBody::PauseContainer { container_id }
        } else {
            RequestBody::ResumeContainer { container_id }
        })?;
        Ok(())
    }

    fn resize_pty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), AgentError> {
        self.call(RequestBody::ResizePty {
            container_id: container_id.into(),
            exec_id: exec_id.map(str::to_string),
            rows,
            cols,
        })?;
        Ok(())
    }

    fn attach(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        paths: &Paths,
        namespace: &str,
    ) -> Result<Attached, String> {
        stdio::attach(&self.endpoint, container_id, exec_id, paths, namespace)
    }

    fn watch_oom(&self) -> Option<(OomEvents, Hangup)> {
        let mut client = self.connect().ok()?;
        let connection = client.stream().try_clone().ok()?;
        let events = std::iter::from_fn(move || loop {
            match client.next_event() {
                Ok(Event::Oom { container_id }) => return Some(container_id),
                Ok(_) => continue,
                Err(_) => return None,
            }
        });
        let hangup = move || {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        };
        Some((Box::new(events), Box::new(hangup)))
    }
}
