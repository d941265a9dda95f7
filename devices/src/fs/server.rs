//! The FUSE server core: request bytes in, reply bytes out, no transport. The virtio-fs device
//! feeds it descriptor chains; the /dev/fuse harness feeds it what the host kernel sends.

use std::mem::size_of;
use std::path::Path;

use vm_memory::ByteValued;

use super::abi::{self, init_flags, OutHeader, MAX_IO, PAGE_SIZE};
use super::passthrough::{Caller, Errno, FsResult, Passthrough};
use super::request::{self, Op, Request};
use super::xattr::XattrReply;

/// The largest reply: a full READ plus its header.
pub const MAX_REPLY: usize = MAX_IO + size_of::<OutHeader>();

/// What we take from the guest's INIT flags when it offers them.
const OFFERED_FLAGS: u32 = init_flags::ASYNC_READ
    | init_flags::ATOMIC_O_TRUNC
    | init_flags::BIG_WRITES
    | init_flags::DO_READDIRPLUS
    | init_flags::READDIRPLUS_AUTO
    | init_flags::PARALLEL_DIROPS
    | init_flags::MAX_PAGES;

#[derive(Debug, thiserror::Error)]
#[error("shared directory {path}: {source}")]
pub struct ServerError {
    path: std::path::PathBuf,
    source: std::io::Error,
}

pub struct FuseServer {
    fs: Passthrough,
    /// The negotiated minor version, once INIT was answered.
    minor: Option<u32>,
}

/// A reply under construction: the header's place, then the arguments.
struct Reply<'r> {
    out: &'r mut Vec<u8>,
    unique: u64,
    room: usize,
}

impl Reply<'_> {
    /// Sends `parts` after the header, or ERANGE if they do not fit the guest's room.
    fn ok(self, parts: &[&[u8]]) -> usize {
        let len = size_of::<OutHeader>() + parts.iter().map(|p| p.len()).sum::<usize>();
        if len > self.room {
            return self.error(libc::ERANGE);
        }
        self.out.clear();
        self.out.extend_from_slice(&[0; size_of::<OutHeader>()]);
        for part in parts {
            self.out.extend_from_slice(part);
        }
        self.finish(0)
    }

    fn error(self, errno: i32) -> usize {
        self.out.clear();
        if self.room < size_of::<OutHeader>() {
            return 0;
        }
        self.out.extend_from_slice(&[0; size_of::<OutHeader>()]);
        self.finish(-errno)
    }

    fn result<T: ByteValued>(self, result: FsResult<T>) -> usize {
        match result {
            Ok(value) => self.ok(&[value.as_slice()]),
            Err(Errno(e)) => self.error(e),
        }
    }

    fn empty(self, result: FsResult<()>) -> usize {
        match result {
            Ok(()) => self.ok(&[]),
            Err(Errno(e)) => self.error(e),
        }
    }

    /// Writes the header over the bytes already in `out`.
    fn finish(self, error: i32) -> usize {
        let header = OutHeader {
            len: self.out.len() as u32,
            error,
            unique: self.unique,
        };
        self.out[..size_of::<OutHeader>()].copy_from_slice(header.as_slice());
        self.out.len()
    }

    /// Lets `fill` append the reply's body to the header, within the room left.
    fn fill(self, fill: impl FnOnce(&mut Vec<u8>, usize) -> FsResult<()>) -> usize {
        let Some(body_room) = self.room.checked_sub(size_of::<OutHeader>()) else {
            return self.error(libc::ERANGE);
        };
        self.out.clear();
        self.out.extend_from_slice(&[0; size_of::<OutHeader>()]);
        match fill(self.out, body_room) {
            Ok(()) if self.out.len() <= self.room => self.finish(0),
            Ok(()) => self.error(libc::ERANGE),
            Err(Errno(e)) => self.error(e),
        }
    }
}

impl FuseServer {
    pub fn new(shared_dir: &Path) -> Result<FuseServer, ServerError> {
        let fs = Passthrough::new(shared_dir).map_err(|source| ServerError {
            path: shared_dir.to_path_buf(),
            source,
        })?;
        Ok(FuseServer { fs, minor: None })
    }

    /// Back to before INIT: every inode but the root forgotten, every handle closed.
    pub fn reset(&mut self) {
        self.fs.clear();
        self.minor = None;
    }

    pub fn filesystem(&self) -> &Passthrough {
        &self.fs
    }

    /// Serves one request. The reply (header included, at most `room` bytes) replaces the
    /// contents of `reply`; the return value is its length, 0 when there is none to send
    /// (FORGET, INTERRUPT, or a request too broken to name).
    pub fn handle(&mut self, request: &[u8], room: usize, reply: &mut Vec<u8>) -> usize {
        reply.clear();
        let room = room.min(MAX_REPLY);
        let req = match request::decode(request) {
            Ok(req) => req,
            Err(e) => {
                tracing::debug!("virtio-fs: bad request: {e}");
                let (Some(errno), Ok(header)) = (e.errno(), request::decode_header(request)) else {
                    return 0;
                };
                return Reply {
                    out: reply,
                    unique: header.unique,
                    room,
                }
                .error(errno);
            }
        };
        let out = Reply {
            out: reply,
            unique: req.header.unique,
            room,
        };
        self.dispatch(req, out)
    }

    /// Answers a request larger than any we accept with EINVAL, from its header alone.
    pub fn refuse_oversized(
        &self,
        head: &[u8],
        len: usize,
        room: usize,
        reply: &mut Vec<u8>,
    ) -> usize {
        reply.clear();
        let Ok(header) = request::decode_header(head) else {
            return 0;
        };
        tracing::debug!(
            "virtio-fs: bad request: {}",
            request::RequestError::Oversized(len)
        );
        Reply {
            out: reply,
            unique: header.unique,
            room: room.min(MAX_REPLY),
        }
        .error(libc::EINVAL)
    }

    fn dispatch(&mut self, req: Request<'_>, out: Reply<'_>) -> usize {
        let node = req.header.nodeid;
        let caller = Caller {
            uid: req.header.uid,
            gid: req.header.gid,
        };
        match req.op {
            Op::Init(arg) => return self.init(arg, out),
            Op::Forget(arg) => {
                self.fs.forget(node, arg.nlookup);
                return 0;
            }
            Op::BatchForget(batch) => {
                for one in batch.iter() {
                    self.fs.forget(one.nodeid, one.nlookup);
                }
                return 0;
            }
            // We answer every request before taking the next, so there is nothing to interrupt.
            Op::Interrupt(_) => return 0,
            _ if self.minor.is_none() => return out.error(libc::EIO),
            Op::Destroy => {
                self.reset();
                return out.ok(&[]);
            }
            _ => {}
        }
        let fs = &mut self.fs;
        match req.op {
            Op::Lookup(name) => out.result(fs.lookup(node, name)),
            Op::Getattr(_) => out.result(fs.getattr(node)),
            Op::Setattr(arg) => out.result(fs.setattr(node, &arg)),
            Op::Readlink => out.fill(|buf, _| fs.readlink(node, buf)),
            Op::Symlink { name, target } => out.result(fs.symlink(caller, node, name, target)),
            Op::Mknod { arg, name } => out.result(fs.mknod(caller, node, name, arg.mode, arg.rdev)),
            Op::Mkdir { arg, name } => {
                out.result(fs.mkdir(caller, node, name, arg.mode | libc::S_IFDIR))
            }
            Op::Unlink(name) => out.empty(fs.unlink(node, name, false)),
            Op::Rmdir(name) => out.empty(fs.unlink(node, name, true)),
            Op::Rename {
                newdir,
                flags,
                old,
                new,
            } => out.empty(fs.rename(node, old, newdir, new, flags)),
            Op::Link { oldnodeid, name } => out.result(fs.link(oldnodeid, node, name)),
            Op::Open(arg) => out.result(fs.open(node, arg.flags)),
            Op::Read(arg) => out.fill(|buf, room| {
                let want = (arg.size as usize).min(room).min(MAX_IO);
                let start = buf.len();
                buf.resize(start + want, 0);
                let n = fs.read(arg.fh, arg.offset, &mut buf[start..])?;
                buf.truncate(start + n);
                Ok(())
            }),
            Op::Write { arg, data } => match fs.write(arg.fh, arg.offset, data) {
                Ok(n) => out.ok(&[abi::WriteOut {
                    size: n as u32,
                    padding: 0,
                }
                .as_slice()]),
                Err(Errno(e)) => out.error(e),
            },
            Op::Statfs => out.result(fs.statfs(node)),
            Op::Release(arg) => out.empty(fs.release(arg.fh, false)),
            Op::Releasedir(arg) => out.empty(fs.release(arg.fh, true)),
            Op::Fsync(arg) => {
                out.empty(fs.fsync(arg.fh, arg.fsync_flags & abi::FSYNC_DATASYNC != 0, false))
            }
            Op::Fsyncdir(arg) => {
                out.empty(fs.fsync(arg.fh, arg.fsync_flags & abi::FSYNC_DATASYNC != 0, true))
            }
            Op::Flush(arg) => out.empty(fs.flush(arg.fh)),
            Op::Setxattr { arg, name, value } => {
                out.empty(fs.setxattr(node, name, value, arg.flags))
            }
            Op::Getxattr { size, name } => xattr_reply(out, fs.getxattr(node, name, size)),
            Op::Listxattr { size } => xattr_reply(out, fs.listxattr(node, size)),
            Op::Removexattr(name) => out.empty(fs.removexattr(node, name)),
            Op::Opendir(_) => out.result(fs.opendir(node)),
            Op::Readdir(arg) | Op::Readdirplus(arg) => {
                let plus = matches!(req.op, Op::Readdirplus(_));
                out.fill(|buf, room| {
                    let size = (arg.size as usize).min(room).min(MAX_IO);
                    fs.readdir(node, arg.fh, arg.offset, size, plus, buf)
                })
            }
            Op::Access(arg) => out.empty(fs.access(caller, node, arg.mask)),
            Op::Create { arg, name } => match fs.create(caller, node, name, arg.flags, arg.mode) {
                Ok((entry, open)) => out.ok(&[entry.as_slice(), open.as_slice()]),
                Err(Errno(e)) => out.error(e),
            },
            Op::Fallocate(arg) => out.empty(fs.fallocate(arg.fh, arg.mode, arg.offset, arg.length)),
            Op::Lseek(arg) => out.result(
                fs.lseek(arg.fh, arg.offset, arg.whence)
                    .map(|offset| abi::LseekOut { offset }),
            ),
            Op::Init(_) | Op::Destroy | Op::Forget(_) | Op::BatchForget(_) | Op::Interrupt(_) => 0,
        }
    }

    /// Agrees on a protocol version and features: the lower of the guest's and ours.
    fn init(&mut self, arg: abi::InitIn, out: Reply<'_>) -> usize {
        if arg.major < abi::KERNEL_VERSION {
            return out.error(libc::EPROTO);
        }
        if arg.major > abi::KERNEL_VERSION {
            // The kernel sends INIT again with our major.
            let ours = abi::InitOut {
                major: abi::KERNEL_VERSION,
                minor: abi::KERNEL_MINOR_VERSION,
                ..Default::default()
            };
            return out.ok(&[ours.as_slice()]);
        }
        if arg.minor < abi::MIN_KERNEL_MINOR_VERSION {
            return out.error(libc::EPROTO);
        }
        // A new session starts from nothing, whatever the last one left.
        self.reset();
        let minor = arg.minor.min(abi::KERNEL_MINOR_VERSION);
        let flags = arg.flags & OFFERED_FLAGS;
        let reply = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor,
            max_readahead: arg.max_readahead,
            flags,
            max_background: 64,
            congestion_threshold: 48,
            max_write: MAX_IO as u32,
            time_gran: 1,
            max_pages: if flags & init_flags::MAX_PAGES != 0 {
                (MAX_IO / PAGE_SIZE) as u16
            } else {
                0
            },
            ..Default::default()
        };
        self.minor = Some(minor);
        out.ok(&[reply.as_slice()])
    }
}

fn xattr_reply(out: Reply<'_>, result: FsResult<XattrReply>) -> usize {
    match result {
        Ok(XattrReply::Size(size)) => out.ok(&[abi::GetxattrOut { size, padding: 0 }.as_slice()]),
        Ok(XattrReply::Data(data)) => out.ok(&[&data]),
        Err(Errno(e)) => out.error(e),
    }
}
