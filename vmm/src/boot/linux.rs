//! The Linux x86 boot protocol's `boot_params` ("zero page") and the identity page tables its
//! 64-bit entry point needs: used for bzImage and for vmlinux files without a PVH note.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::KernelLoaderResult;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::pvh::e820_map;
use super::InitrdRegion;
use crate::memory::{CMDLINE_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR, ZERO_PAGE_ADDR};

const BOOT_FLAG: u16 = 0xaa55;
const HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
const E820_RAM: u32 = 1;
/// The 64-bit entry of a bzImage is 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParams(boot_params);
// SAFETY: boot_params is plain old data (integers and arrays of them, packed), valid for any
// bit pattern.
unsafe impl ByteValued for BootParams {}

/// Writes the zero page and returns the 64-bit entry address.
pub(super) fn write_boot_params(
    mem: &GuestMemoryMmap,
    loaded: &KernelLoaderResult,
    bzimage: bool,
    memory_bytes: u64,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
) -> Result<u64, vm_memory::GuestMemoryError> {
    let mut params = BootParams::default();
    if let Some(header) = loaded.setup_header {
        params.0.hdr = header;
    } else {
        params.0.hdr.boot_flag = BOOT_FLAG;
        params.0.hdr.header = HEADER_MAGIC;
        params.0.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.0.hdr.type_of_loader = LOADER_UNDEFINED;
    params.0.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.0.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.0.hdr.ramdisk_image = initrd.addr as u32;
        params.0.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(memory_bytes);
    for (slot, (addr, size)) in params.0.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.0.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;

    let entry = if bzimage {
        loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET
    } else {
        loaded.kernel_load.0
    };
    Ok(entry)
}

/// Identity-maps the first GiB with 2 MiB pages: enough for the kernel's own startup code,
/// which builds its real page tables at once.
pub(super) fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPT_ADDR | PRESENT_WRITABLE, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | PRESENT_WRITABLE, GuestAddress(PDPT_ADDR))?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PRESENT_WRITABLE | HUGE,
            GuestAddress(PD_ADDR + i * 8),
        )?;
    }
    Ok(())
}
