//! The agent of a running sandbox, reachable from any process on the host: its VM's hybrid
//! vsock socket is all it takes (`vmpod exec` talks to a sandbox another process owns).

use crate::error::SandboxError;
use crate::vsock::connect;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use vmpod_protocol::frame::write_frame;
use vmpod_protocol::{
    Client, ForwardHello, StdStream, StdioHello, AGENT_PORT, FORWARD_PORT, STDIO_PORT,
};

#[derive(Debug, Clone)]
pub struct Endpoint {
    uds: PathBuf,
}

impl Endpoint {
    pub fn new(vsock_uds: impl Into<PathBuf>) -> Self {
        Endpoint {
            uds: vsock_uds.into(),
        }
    }

    pub fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    /// A control connection, after the protocol handshake.
    pub fn control(&self) -> Result<Client<UnixStream>, SandboxError> {
        let stream = connect(&self.uds, AGENT_PORT).ok_or_else(|| {
            SandboxError::Invalid(format!(
                "the agent behind {} refused a control connection (is the sandbox running?)",
                self.uds.display()
            ))
        })?;
        Ok(Client::handshake(stream)?)
    }

    /// Opens one stdio stream of a process.
    pub fn stream(
        &self,
        container: &str,
        exec: Option<&str>,
        stream: StdStream,
    ) -> Result<UnixStream, SandboxError> {
        let mut s = connect(&self.uds, STDIO_PORT).ok_or_else(|| {
            SandboxError::Invalid(format!(
                "the agent behind {} refused a stdio stream",
                self.uds.display()
            ))
        })?;
        write_frame(
            &mut s,
            &StdioHello {
                container_id: container.into(),
                exec_id: exec.map(str::to_string),
                stream,
            },
        )
        .map_err(vmpod_protocol::ClientError::from)?;
        Ok(s)
    }

    /// A connection to TCP `port` inside the VM, for a published port: raw bytes both ways.
    /// The agent closes it if nothing listens on that port.
    pub fn forward(&self, port: u16) -> Result<UnixStream, SandboxError> {
        let mut s = connect(&self.uds, FORWARD_PORT).ok_or_else(|| {
            SandboxError::Invalid(format!(
                "the agent behind {} refused a connection for port {port}",
                self.uds.display()
            ))
        })?;
        write_frame(&mut s, &ForwardHello { port }).map_err(vmpod_protocol::ClientError::from)?;
        Ok(s)
    }
}
