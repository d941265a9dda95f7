//! Decoding one FUSE request, bytes the guest wrote, into a typed `Request`.
//!
//! Nothing here trusts a length: the header's `len` must equal what arrived, each argument
//! struct must fit, names must be NUL-terminated inside the request, and a WRITE or SETXATTR
//! payload must be exactly as long as it claims. Decoding borrows from the bytes and allocates
//! nothing.

use super::abi::{self, opcode, read_struct, InHeader, MAX_HEADER_ROOM, MAX_IO};
use vm_memory::ByteValued;

/// The largest request we accept: a full WRITE plus its header and arguments.
pub const MAX_REQUEST: usize = MAX_IO + MAX_HEADER_ROOM;
/// The longest extended attribute value (Linux's XATTR_SIZE_MAX).
pub const MAX_XATTR: usize = 64 << 10;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request of {0} bytes is shorter than the header")]
    ShortHeader(usize),
    #[error("header says {header} bytes but {actual} arrived")]
    LengthMismatch { header: u32, actual: usize },
    #[error("request of {0} bytes is larger than {MAX_REQUEST}")]
    Oversized(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u32),
    #[error("opcode {opcode}: arguments are shorter than {needed} bytes")]
    ShortArguments { opcode: u32, needed: usize },
    #[error("opcode {0}: name is not NUL-terminated")]
    NameNotTerminated(u32),
    #[error("opcode {opcode}: payload of {actual} bytes where {declared} were declared")]
    PayloadMismatch {
        opcode: u32,
        declared: u32,
        actual: usize,
    },
    #[error("batch forget of {0} entries does not fit the request")]
    BatchTooLong(u32),
}

impl RequestError {
    /// The errno the guest gets for it; `None` where the request cannot be answered at all.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RequestError::ShortHeader(_) => None,
            RequestError::UnknownOpcode(_) => Some(libc::ENOSYS),
            _ => Some(libc::EINVAL),
        }
    }
}

/// A decoded request: the header's caller identity and the operation.
#[derive(Debug)]
pub struct Request<'a> {
    pub header: InHeader,
    pub op: Op<'a>,
}

/// One operation with its arguments. Names are the bytes before their NUL (never containing
/// one); checking what they name is the filesystem's job.
#[derive(Debug)]
pub enum Op<'a> {
    Init(abi::InitIn),
    Destroy,
    Lookup(&'a [u8]),
    Forget(abi::ForgetIn),
    BatchForget(BatchForget<'a>),
    Getattr(abi::GetattrIn),
    Setattr(abi::SetattrIn),
    Readlink,
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        arg: abi::MknodIn,
        name: &'a [u8],
    },
    Mkdir {
        arg: abi::MkdirIn,
        name: &'a [u8],
    },
    Unlink(&'a [u8]),
    Rmdir(&'a [u8]),
    Rename {
        newdir: u64,
        flags: u32,
        old: &'a [u8],
        new: &'a [u8],
    },
    Link {
        oldnodeid: u64,
        name: &'a [u8],
    },
    Open(abi::OpenIn),
    Read(abi::ReadIn),
    Write {
        arg: abi::WriteIn,
        data: &'a [u8],
    },
    Statfs,
    Release(abi::ReleaseIn),
    Fsync(abi::FsyncIn),
    Flush(abi::FlushIn),
    Setxattr {
        arg: abi::SetxattrIn,
        name: &'a [u8],
        value: &'a [u8],
    },
    Getxattr {
        size: u32,
        name: &'a [u8],
    },
    Listxattr {
        size: u32,
    },
    Removexattr(&'a [u8]),
    Opendir(abi::OpenIn),
    Readdir(abi::ReadIn),
    Readdirplus(abi::ReadIn),
    Releasedir(abi::ReleaseIn),
    Fsyncdir(abi::FsyncIn),
    Access(abi::AccessIn),
    Create {
        arg: abi::CreateIn,
        name: &'a [u8],
    },
    Interrupt(abi::InterruptIn),
    Fallocate(abi::FallocateIn),
    Lseek(abi::LseekIn),
}

/// BATCH_FORGET's entries, checked to fit, decoded as they are walked.
#[derive(Debug, Clone, Copy)]
pub struct BatchForget<'a> {
    entries: &'a [u8],
}

impl<'a> BatchForget<'a> {
    pub fn iter(&self) -> impl Iterator<Item = abi::ForgetOne> + 'a {
        self.entries
            .chunks_exact(std::mem::size_of::<abi::ForgetOne>())
            .filter_map(read_struct::<abi::ForgetOne>)
    }
}

/// Reads the header alone: enough to answer even a request whose body is bad.
pub fn decode_header(bytes: &[u8]) -> Result<InHeader, RequestError> {
    read_struct::<InHeader>(bytes).ok_or(RequestError::ShortHeader(bytes.len()))
}

/// Walks a request's arguments front to back.
struct Args<'a> {
    opcode: u32,
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    fn get<T: ByteValued + Default>(&mut self) -> Result<T, RequestError> {
        let size = std::mem::size_of::<T>();
        let value = read_struct::<T>(self.rest).ok_or(RequestError::ShortArguments {
            opcode: self.opcode,
            needed: size,
        })?;
        self.rest = &self.rest[size..];
        Ok(value)
    }

    /// The next NUL-terminated name, without its NUL.
    fn name(&mut self) -> Result<&'a [u8], RequestError> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(RequestError::NameNotTerminated(self.opcode))?;
        let name = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Ok(name)
    }

    /// Exactly `declared` bytes of payload, and nothing after them.
    fn payload(&mut self, declared: u32) -> Result<&'a [u8], RequestError> {
        if self.rest.len() != declared as usize {
            return Err(RequestError::PayloadMismatch {
                opcode: self.opcode,
                declared,
                actual: self.rest.len(),
            });
        }
        Ok(std::mem::take(&mut self.rest))
    }
}

/// Decodes one whole request.
pub fn decode(bytes: &[u8]) -> Result<Request<'_>, RequestError> {
    if bytes.len() > MAX_REQUEST {
        return Err(RequestError::Oversized(bytes.len()));
    }
    let header = decode_header(bytes)?;
    if header.len as usize != bytes.len() {
        return Err(RequestError::LengthMismatch {
            header: header.len,
            actual: bytes.len(),
        });
    }
    let mut args = Args {
        opcode: header.opcode,
        rest: &bytes[std::mem::size_of::<InHeader>()..],
    };
    let a = &mut args;
    let op = match header.opcode {
        opcode::INIT => Op::Init(a.get()?),
        opcode::DESTROY => Op::Destroy,
        opcode::LOOKUP => Op::Lookup(a.name()?),
        opcode::FORGET => Op::Forget(a.get()?),
        opcode::BATCH_FORGET => {
            let head: abi::BatchForgetIn = a.get()?;
            let len = (head.count as usize)
                .checked_mul(std::mem::size_of::<abi::ForgetOne>())
                .filter(|&len| len <= a.rest.len())
                .ok_or(RequestError::BatchTooLong(head.count))?;
            Op::BatchForget(BatchForget {
                entries: &a.rest[..len],
            })
        }
        opcode::GETATTR => Op::Getattr(a.get()?),
        opcode::SETATTR => Op::Setattr(a.get()?),
        opcode::READLINK => Op::Readlink,
        opcode::SYMLINK => {
            let name = a.name()?;
            let target = a.name()?;
            Op::Symlink { name, target }
        }
        opcode::MKNOD => {
            let arg = a.get()?;
            Op::Mknod {
                arg,
                name: a.name()?,
            }
        }
        opcode::MKDIR => {
            let arg = a.get()?;
            Op::Mkdir {
                arg,
                name: a.name()?,
            }
        }
        opcode::UNLINK => Op::Unlink(a.name()?),
        opcode::RMDIR => Op::Rmdir(a.name()?),
        opcode::RENAME => {
            let arg: abi::RenameIn = a.get()?;
            let old = a.name()?;
            Op::Rename {
                newdir: arg.newdir,
                flags: 0,
                old,
                new: a.name()?,
            }
        }
        opcode::RENAME2 => {
            let arg: abi::Rename2In = a.get()?;
            let old = a.name()?;
            Op::Rename {
                newdir: arg.newdir,
                flags: arg.flags,
                old,
                new: a.name()?,
            }
        }
        opcode::LINK => {
            let arg: abi::LinkIn = a.get()?;
            Op::Link {
                oldnodeid: arg.oldnodeid,
                name: a.name()?,
            }
        }
        opcode::OPEN => Op::Open(a.get()?),
        opcode::READ => Op::Read(a.get()?),
        opcode::WRITE => {
            let arg: abi::WriteIn = a.get()?;
            Op::Write {
                arg,
                data: a.payload(arg.size)?,
            }
        }
        opcode::STATFS => Op::Statfs,
        opcode::RELEASE => Op::Release(a.get()?),
        opcode::FSYNC => Op::Fsync(a.get()?),
        opcode::FLUSH => Op::Flush(a.get()?),
        opcode::SETXATTR => {
            let arg: abi::SetxattrIn = a.get()?;
            let name = a.name()?;
            Op::Setxattr {
                arg,
                name,
                value: a.payload(arg.size)?,
            }
        }
        opcode::GETXATTR => {
            let arg: abi::GetxattrIn = a.get()?;
            Op::Getxattr {
                size: arg.size,
                name: a.name()?,
            }
        }
        opcode::LISTXATTR => {
            let arg: abi::GetxattrIn = a.get()?;
            Op::Listxattr { size: arg.size }
        }
        opcode::REMOVEXATTR => Op::Removexattr(a.name()?),
        opcode::OPENDIR => Op::Opendir(a.get()?),
        opcode::READDIR => Op::Readdir(a.get()?),
        opcode::READDIRPLUS => Op::Readdirplus(a.get()?),
        opcode::RELEASEDIR => Op::Releasedir(a.get()?),
        opcode::FSYNCDIR => Op::Fsyncdir(a.get()?),
        opcode::ACCESS => Op::Access(a.get()?),
        opcode::CREATE => {
            let arg = a.get()?;
            Op::Create {
                arg,
                name: a.name()?,
            }
        }
        opcode::INTERRUPT => Op::Interrupt(a.get()?),
        opcode::FALLOCATE => Op::Fallocate(a.get()?),
        opcode::LSEEK => Op::Lseek(a.get()?),
        other => return Err(RequestError::UnknownOpcode(other)),
    };
    Ok(Request { header, op })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request as the kernel lays it out: header (with the right length) then `parts`.
    pub fn request(opcode: u32, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique: 0x1234,
            nodeid,
            uid: 1000,
            gid: 1000,
            pid: 42,
            ..Default::default()
        };
        [header.as_slice(), &body].concat()
    }

    #[test]
    fn lookup_name_stops_at_its_nul() {
        let bytes = request(opcode::LOOKUP, 1, &[b"hello\0"]);
        let req = decode(&bytes).unwrap();
        assert_eq!(req.header.unique, 0x1234);
        assert!(matches!(req.op, Op::Lookup(b"hello")));
    }

    #[test]
    fn short_header_cannot_be_answered() {
        let err = decode(&[0u8; 39]).unwrap_err();
        assert_eq!(err, RequestError::ShortHeader(39));
        assert_eq!(err.errno(), None);
    }

    #[test]
    fn length_larger_than_the_request_is_refused() {
        let mut bytes = request(opcode::STATFS, 1, &[]);
        bytes[0..4].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "header says 4096 bytes but 40 arrived"
        );
    }

    #[test]
    fn name_without_nul_is_refused() {
        let bytes = request(opcode::LOOKUP, 1, &[b"hello"]);
        assert_eq!(
            decode(&bytes).unwrap_err(),
            RequestError::NameNotTerminated(opcode::LOOKUP)
        );
    }

    #[test]
    fn unknown_opcode_answers_enosys() {
        let err = decode(&request(9999, 1, &[])).unwrap_err();
        assert_eq!(
            (err.clone(), err.errno()),
            (RequestError::UnknownOpcode(9999), Some(libc::ENOSYS))
        );
    }

    #[test]
    fn write_payload_must_match_its_declared_size() {
        let arg = abi::WriteIn {
            size: 10,
            ..Default::default()
        };
        let bytes = request(opcode::WRITE, 2, &[arg.as_slice(), b"short"]);
        assert!(matches!(
            decode(&bytes),
            Err(RequestError::PayloadMismatch {
                declared: 10,
                actual: 5,
                ..
            })
        ));
    }

    #[test]
    fn truncated_argument_struct_is_refused() {
        let bytes = request(opcode::SETATTR, 2, &[&[0u8; 20]]);
        assert!(matches!(
            decode(&bytes),
            Err(RequestError::ShortArguments { needed: 88, .. })
        ));
    }

    #[test]
    fn batch_forget_count_beyond_the_request_is_refused() {
        let head = abi::BatchForgetIn {
            count: u32::MAX,
            dummy: 0,
        };
        let bytes = request(opcode::BATCH_FORGET, 0, &[head.as_slice(), &[0u8; 16]]);
        assert_eq!(
            decode(&bytes).unwrap_err(),
            RequestError::BatchTooLong(u32::MAX)
        );
    }

    #[test]
    fn oversized_request_is_refused_before_parsing() {
        let bytes = vec![0u8; MAX_REQUEST + 1];
        assert_eq!(
            decode(&bytes).unwrap_err(),
            RequestError::Oversized(MAX_REQUEST + 1)
        );
    }

    #[test]
    fn rename2_carries_both_names_and_its_flags() {
        let arg = abi::Rename2In {
            newdir: 7,
            flags: abi::RENAME_EXCHANGE,
            padding: 0,
        };
        let bytes = request(opcode::RENAME2, 1, &[arg.as_slice(), b"a\0b\0"]);
        match decode(&bytes).unwrap().op {
            Op::Rename {
                newdir,
                flags,
                old,
                new,
            } => {
                assert_eq!((newdir, flags, old, new), (7, 2, &b"a"[..], &b"b"[..]));
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
