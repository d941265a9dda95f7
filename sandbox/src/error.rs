use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}: {path} is missing ({hint})")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM ended before its agent was ready ({status}); its console says:\n{console}")]
    VmEnded { status: String, console: String },
    #[error("the agent was not ready within {0} s")]
    AgentTimeout(u64),
    #[error("agent")]
    Agent(#[from] vmpod_protocol::ClientError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Config(#[from] crate::host_config::ConfigError),
}

/// A disk slot that could not be filled or emptied (slots.rs).
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("all {count} spare disk slots of sandbox {sandbox} are in use")]
    Full { sandbox: String, count: usize },
    #[error("sandbox {sandbox} has no spare disk slots (its VM's other devices left no room)")]
    NoSpareSlots { sandbox: String },
    #[error("sandbox {sandbox} has no inserted disk with serial {serial:?}")]
    UnknownSerial { sandbox: String, serial: String },
    #[error("disk image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} is not a regular file or block device")]
    NotADisk { path: PathBuf },
    #[error("disk image path {path:?} cannot be sent to the VM (not UTF-8, or holds a newline)")]
    UnsendablePath { path: PathBuf },
    #[error("the VM's disk backend refused `{command}`: {reason}")]
    Refused { command: String, reason: String },
    #[error("cannot reach the VM's disk backend")]
    Backend(#[source] std::io::Error),
}

pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// An error and its causes on one line, as a user reads them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += ": ";
        text += &c.to_string();
        cause = c.source();
    }
    text
}
