//! The vmpod protocol: what the host (sandbox, shim, tests) and vmpod-agent say to each other.
//!
//! One control connection per client on vsock port [`AGENT_PORT`] carries length-prefixed JSON
//! frames ([`frame`]): requests from the host, responses and pushed events from the agent
//! ([`message`]). Process stdio never goes through it: each stream is its own vsock connection
//! to [`STDIO_PORT`], opened with one [`message::StdioHello`] frame and raw bytes after it.

pub mod client;
pub mod frame;
pub mod message;
pub mod mux;

pub use client::{Client, ClientError};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME};
pub use message::*;

/// Bumped on any change a peer of the previous version would misread.
pub const PROTOCOL_VERSION: u32 = 1;
/// The agent's control port.
pub const AGENT_PORT: u32 = 1024;
/// The agent's port for stdio streams.
pub const STDIO_PORT: u32 = 1025;
