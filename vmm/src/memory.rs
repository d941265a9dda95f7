//! Guest physical memory: the layout every boot path shares, and the anonymous mapping behind it.
//!
//! Memory is `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`: pages the guest never touches cost
//! the host nothing, which is what makes a 128 MiB guest cheap when it uses 20 MiB.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Boot GDT (null, code32/64, data, TSS).
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`, its module list and memory map.
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// Linux boot protocol `boot_params` (the "zero page"); used only when PVH is not.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Identity page tables mapping the first GiB, for vCPUs the VMM starts in 64-bit mode: the boot
/// vCPU of the Linux 64-bit protocol and application processors started through the AP start
/// port. They sit in low memory the guest is told is reserved, so they stay valid all along.
pub const PML4_ADDR: u64 = 0x9c000;
pub const PDPT_ADDR: u64 = 0x9d000;
pub const PD_ADDR: u64 = 0x9e000;
/// Kernel command line, NUL-terminated.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// The MP table sits in the last KiB of base memory, where Linux scans for it.
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// Base memory from here up (page tables, MP table) is reserved, not RAM, in the memory map.
pub const LOW_RESERVED_START: u64 = PML4_ADDR;
/// The kernel is loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// 32-bit MMIO hole: IOAPIC, LAPIC and (later) virtio-mmio devices live here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Guest-physical word where Linux records warm (0x1234) or cold (0) reboot before resetting;
/// with `reboot=panic_warm` a warm reset means the guest kernel panicked.
pub const BIOS_REBOOT_FLAG_ADDR: u64 = 0x472;
pub const WARM_REBOOT_FLAG: u16 = 0x1234;

// The boot structures must not overlap; checked when compiling.
const _: () = assert!(PVH_MEMMAP_ADDR + 0x1000 <= CMDLINE_ADDR);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= LOW_RESERVED_START);
const _: () = assert!(PD_ADDR + 0x1000 <= MPTABLE_ADDR);

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges for `size` bytes: one range below the MMIO hole, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// The end of RAM below 4 GiB: where the initrd goes, below the top.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (start, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        mib: size >> 20,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_range_from_zero() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            ranges[1],
            (GuestAddress(1 << 32), (4 << 30) - MMIO_GAP_START)
        );
        assert_eq!(low_ram_end(4 << 30), MMIO_GAP_START);
    }
}
