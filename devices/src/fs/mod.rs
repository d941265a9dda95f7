//! virtio-fs: one host directory shared with the guest, served by our own FUSE passthrough
//! server (`server`, `passthrough`) over the device's request queue.
//!
//! The device is the thin part: it copies a chain's readable bytes (bounded) into a request
//! buffer, lets the server answer into a reply buffer no larger than the chain's writable
//! part, and copies that back. The server knows nothing of virtio, so the /dev/fuse harness in
//! `fusedev` drives the very same code from the host kernel's FUSE.

pub mod abi;
mod files;
pub mod fusedev;
mod handles;
mod inodes;
pub mod passthrough;
mod readdir;
pub mod request;
pub mod server;
mod sys;
mod xattr;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod escape_tests;
#[cfg(test)]
mod tests;

use std::path::Path;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;

use crate::virtio::{
    read_config_bytes, serve_queue, QueueError, UsedQueues, VirtioDevice, COMMON_FEATURES,
    DEVICE_TYPE_FS,
};
use abi::opcode;
use request::MAX_REQUEST;
pub use server::{FuseServer, ServerError};

/// The longest tag (the name the guest mounts), NUL-padded in the config space.
pub const TAG_LEN: usize = 36;
const QUEUE_SIZE: u16 = 256;
/// The high-priority queue (FORGET, INTERRUPT) and one request queue.
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE, QUEUE_SIZE];
const HIPRIO_QUEUE: usize = 0;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes")]
    Tag(String),
    #[error(transparent)]
    Server(#[from] ServerError),
}

pub struct VirtioFs {
    server: FuseServer,
    /// virtio_fs_config: tag[36], num_request_queues (u32).
    config: Vec<u8>,
    /// The request and reply buffers, reused; each grows to at most about 1 MiB.
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl VirtioFs {
    /// Shares `shared_dir` under `tag`; the guest mounts it with `mount -t virtiofs <tag> DIR`.
    pub fn new(tag: &str, shared_dir: &Path) -> Result<VirtioFs, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let mut config = vec![0u8; TAG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config.extend_from_slice(&1u32.to_le_bytes());
        Ok(VirtioFs {
            server: FuseServer::new(shared_dir)?,
            config,
            request: Vec::new(),
            reply: Vec::new(),
        })
    }

    /// Serves one chain; returns the bytes written into its writable part.
    fn serve(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        hiprio: bool,
    ) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem))
        else {
            tracing::debug!("virtio-fs: chain with unusable buffers");
            return 0;
        };
        let len = reader.available_bytes();
        // Past the largest request only the header is read: enough to answer it with EINVAL.
        let take = if len > MAX_REQUEST {
            std::mem::size_of::<abi::InHeader>().min(len)
        } else {
            len
        };
        self.request.resize(take, 0);
        if std::io::Read::read_exact(&mut reader, &mut self.request).is_err() {
            return 0;
        }
        if hiprio {
            // Only FORGETs (answered by nobody) and INTERRUPTs (ignored) belong here.
            let opcode = request::decode_header(&self.request).map(|h| h.opcode);
            if !matches!(opcode, Ok(opcode::FORGET | opcode::BATCH_FORGET)) {
                return 0;
            }
        }
        let room = writer.available_bytes();
        let n = if len > MAX_REQUEST {
            self.server
                .refuse_oversized(&self.request, len, room, &mut self.reply)
        } else {
            self.server.handle(&self.request, room, &mut self.reply)
        };
        if n == 0 || std::io::Write::write_all(&mut writer, &self.reply[..n]).is_err() {
            return 0;
        }
        n as u32
    }

    pub fn server(&self) -> &FuseServer {
        &self.server
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        COMMON_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        let hiprio = index == HIPRIO_QUEUE;
        serve_queue(index, queues, mem, |chain| self.serve(chain, mem, hiprio))
    }

    /// No FUSE state survives a reset: the next driver starts with INIT and only the root.
    fn reset(&mut self) {
        self.server.reset();
    }
}
