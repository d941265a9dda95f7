//! PVH boot information (`hvm_start_info`): the memory map, the command line and the initrd.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::InitrdRegion;
use crate::memory::{
    ram_ranges, CMDLINE_ADDR, HIMEM_START, LOW_RESERVED_START, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR,
    PVH_START_INFO_ADDR,
};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// The guest's RAM as the E820-style map both boot protocols hand over.
pub(super) fn e820_map(memory_bytes: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, LOW_RESERVED_START)];
    for (start, len) in ram_ranges(memory_bytes) {
        let (start, len) = if start.0 == 0 {
            (HIMEM_START, len - HIMEM_START)
        } else {
            (start.0, len)
        };
        map.push((start, len));
    }
    map
}

pub(super) fn write_start_info(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    initrd: Option<InitrdRegion>,
) -> Result<(), vm_memory::GuestMemoryError> {
    let map = e820_map(memory_bytes);
    for (i, (addr, size)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
            reserved: 0,
        };
        mem.write_obj(
            entry,
            GuestAddress(PVH_MEMMAP_ADDR + (i * std::mem::size_of_val(&entry)) as u64),
        )?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    mem.write_obj(info, GuestAddress(PVH_START_INFO_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_leaves_out_the_legacy_hole() {
        assert_eq!(
            e820_map(128 << 20),
            vec![
                (0, LOW_RESERVED_START),
                (HIMEM_START, (128 << 20) - HIMEM_START)
            ]
        );
    }

    #[test]
    fn start_info_carries_magic_cmdline_and_initrd() {
        let mem = crate::memory::create_guest_memory(32 << 20).unwrap();
        let initrd = InitrdRegion {
            addr: 0x1e0_0000,
            size: 4096,
        };
        write_start_info(&mem, 32 << 20, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!((info.nr_modules, info.memmap_entries), (1, 2));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!((module.paddr, module.size), (0x1e0_0000, 4096));
    }
}
