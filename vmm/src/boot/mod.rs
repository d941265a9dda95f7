//! Putting a guest kernel into memory: kernel image (PVH or 64-bit ELF vmlinux, bzImage),
//! initrd, command line, MP table and the protocol's boot information.

mod initrd_format;
mod linux;
pub mod mptable;
mod pvh;
pub mod regs;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{self, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use crate::memory::{low_ram_end, CMDLINE_ADDR, CMDLINE_MAX, GDT_ADDR, HIMEM_START, MPTABLE_ADDR};
pub use regs::EntryPoint;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {0}: not an ELF file or a bzImage")]
    UnknownKernelFormat(PathBuf),
    #[error("kernel {path}: {source}")]
    LoadKernel {
        path: PathBuf,
        source: loader::Error,
    },
    #[error("initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path}: {why}")]
    InitrdFormat { path: PathBuf, why: String },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel (room for {room} bytes); give the VM more memory")]
    InitrdTooLarge { path: PathBuf, size: u64, room: u64 },
    #[error("initrd {path}: cannot copy into guest memory: {source}")]
    CopyInitrd {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("kernel command line: {0}")]
    LoadCmdline(loader::Error),
    #[error("cannot write boot structures into guest memory: {0}")]
    WriteBootInfo(#[from] vm_memory::GuestMemoryError),
}

/// What the caller asked to boot.
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub cpus: u8,
    pub memory_bytes: u64,
}

/// An initrd's place in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct InitrdRegion {
    pub addr: u64,
    pub size: u64,
}

/// Loads everything and returns where vCPU 0 starts.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<EntryPoint, BootError> {
    let (loaded, bzimage) = load_kernel(mem, spec.kernel)?;
    let initrd = match spec.initrd {
        Some(path) => Some(load_initrd(
            mem,
            path,
            loaded.kernel_end,
            spec.memory_bytes,
        )?),
        None => None,
    };

    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(spec.cmdline)
        .map_err(BootError::Cmdline)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(BootError::LoadCmdline)?;
    let cmdline_len = spec.cmdline.len() + 1;

    mem.write_slice(
        &mptable::mptable_bytes(MPTABLE_ADDR as u32, spec.cpus),
        GuestAddress(MPTABLE_ADDR),
    )?;
    for (i, entry) in regs::GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }

    linux::write_page_tables(mem)?;
    match (bzimage, loaded.pvh_boot_cap) {
        (false, PvhBootCapability::PvhEntryPresent(entry)) => {
            pvh::write_start_info(mem, spec.memory_bytes, initrd)?;
            Ok(EntryPoint::Pvh(entry.0))
        }
        _ => {
            let entry = linux::write_boot_params(
                mem,
                &loaded,
                bzimage,
                spec.memory_bytes,
                cmdline_len,
                initrd,
            )?;
            Ok(EntryPoint::Linux64(entry))
        }
    }
}

/// Returns the loader's result and whether the image was a bzImage.
fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<(KernelLoaderResult, bool), BootError> {
    let open_err = |source| BootError::OpenKernel {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut file, himem) {
        Ok(result) => return Ok((result, false)),
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {}
        Err(source) => {
            return Err(BootError::LoadKernel {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    match BzImage::load(mem, None, &mut file, himem) {
        Ok(result) => Ok((result, true)),
        Err(loader::Error::Bzimage(
            loader::bzimage::Error::InvalidBzImage | loader::bzimage::Error::ReadBzImageHeader,
        )) => Err(BootError::UnknownKernelFormat(path.to_path_buf())),
        Err(source) => Err(BootError::LoadKernel {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Places the initrd page-aligned at the top of low RAM, which is where bootloaders put it and
/// keeps it clear of the kernel's own early allocations.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    memory_bytes: u64,
) -> Result<InitrdRegion, BootError> {
    let open_err = |source| BootError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let top = low_ram_end(memory_bytes);
    let room = top.saturating_sub(kernel_end.next_multiple_of(4096));
    if size > room {
        return Err(BootError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            room,
        });
    }
    let mut head = [0u8; initrd_format::MAGIC_LEN];
    let read = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).map_err(open_err)?;
    if let Some(why) = initrd_format::InitrdFormat::of(&head[..read]).refusal() {
        return Err(BootError::InitrdFormat {
            path: path.to_path_buf(),
            why,
        });
    }
    let addr = (top - size) & !0xfff;
    let mut slice = mem
        .get_slice(GuestAddress(addr), size as usize)
        .map_err(|source| BootError::CopyInitrd {
            path: path.to_path_buf(),
            source,
        })?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| BootError::OpenInitrd {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(InitrdRegion { addr, size })
}
