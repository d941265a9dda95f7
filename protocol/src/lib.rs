//! The vmpod protocol: what the host (sandbox, shim, tests) and vmpod-agent say to each other.
//!
//! One control connection per client on vsock port [`AGENT_PORT`] carries length-prefixed JSON
//! frames ([`frame`]): requests from the host, responses and pushed events from the agent
//! ([`message`]). Process stdio never goes through it: each stream is its own vsock connection
//! to [`STDIO_PORT`], opened with one [`message::StdioHello`] frame and raw bytes after it.
//! A published port works the same way: each connection to [`FORWARD_PORT`] opens with one
//! [`message::ForwardHello`] frame, and the agent joins the rest to a TCP connection inside the VM.

pub mod client;
pub mod frame;
pub mod message;
pub mod mux;

pub use client::{Client, ClientError};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME};
pub use message::*;

/// Bumped on any change a peer of the previous version would misread.
pub const PROTOCOL_VERSION: u32 = 3;
/// The agent's control port.
pub const AGENT_PORT: u32 = 1024;
/// The agent's port for stdio streams.
pub const STDIO_PORT: u32 = 1025;
/// The agent's port for published ports' connections (an agent without it refuses the
/// connection, so no frame is ever misread and [`PROTOCOL_VERSION`] stays).
pub const FORWARD_PORT: u32 = 1026;
/// Where the agent mounts the VM's shared filesystem (the sandbox's shared directory: one
/// virtio-fs or 9p filesystem tagged [`SHARED_FS_TAG`]). A bind mount in a container's spec whose
/// source lies under it reads the host's files live; the agent mounts the filesystem on the
/// first such container, so a VM that never needs it (a template) never mounts it.
pub const SHARED_FS_DIR: &str = "/run/vmpod/shared";
/// The tag under which the VMM offers the shared directory to the guest.
pub const SHARED_FS_TAG: &str = "vmpod";
/// A bind source naming the pod's /dev/shm: one tmpfs in the guest, shared by the pod's
/// containers and mounted by the agent the first time a container binds it.
pub const POD_SHM_DIR: &str = "/run/vmpod/pod/shm";
