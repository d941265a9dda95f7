//! The boot GDT and the register state each boot protocol starts the first vCPU in.
//!
//! Pure functions over KVM's structs: the values are the protocol's contract, so they are
//! tested here rather than discovered by a guest that silently never runs.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::memory::{GDT_ADDR, PML4_ADDR, PVH_START_INFO_ADDR, ZERO_PAGE_ADDR};

/// Flat descriptors: null, 64-bit code, 32-bit code, data, TSS.
pub const GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE64: u8 = 1;
const CODE32: u8 = 2;
const DATA: u8 = 3;
const TSS: u8 = 4;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_PGE: u64 = 1 << 7;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NX: u64 = 1 << 11;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 2;
/// Stack for the 64-bit Linux entry, which needs one before it sets its own.
const BOOT_STACK: u64 = 0x8ff0;

/// What a guest names when it asks for an application processor to be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApStart {
    pub rip: u64,
    pub rsp: u64,
    pub cr3: u64,
}

/// Where the first vCPU starts, by boot protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// PVH: 32-bit protected mode, paging off, %ebx → `hvm_start_info`.
    Pvh(u64),
    /// Linux 64-bit boot protocol: long mode, identity paging, %rsi → `boot_params`.
    Linux64(u64),
    /// An application processor the guest asked the VMM to start: long mode on the guest
    /// kernel's own page tables, at its 64-bit AP entry with a stack it chose.
    Ap64(ApStart),
}

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The hidden part of a segment register, as the CPU would load it from `GDT[index]`.
fn segment(index: u8) -> kvm_segment {
    let entry = GDT[index as usize];
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base,
        limit: if granular {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

pub fn initial_regs(entry: EntryPoint) -> kvm_regs {
    match entry {
        EntryPoint::Pvh(rip) => kvm_regs {
            rip,
            rbx: PVH_START_INFO_ADDR,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
        EntryPoint::Linux64(rip) => kvm_regs {
            rip,
            rsi: ZERO_PAGE_ADDR,
            rsp: BOOT_STACK,
            rbp: BOOT_STACK,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
        EntryPoint::Ap64(start) => kvm_regs {
            rip: start.rip,
            rsp: start.rsp,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
    }
}

/// Changes `sregs` (as read from a fresh vCPU) into the protocol's starting state.
pub fn initial_sregs(entry: EntryPoint, sregs: &mut kvm_sregs) {
    let code = match entry {
        EntryPoint::Pvh(_) => CODE32,
        EntryPoint::Linux64(_) | EntryPoint::Ap64(_) => CODE64,
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment(code);
    let data = segment(DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS);
    match entry {
        EntryPoint::Pvh(_) => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryPoint::Linux64(_) => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryPoint::Ap64(start) => {
            // The kernel's page tables may carry NX bits and global pages: NX and PGE must be on
            // before the first fetch.
            sregs.cr3 = start.cr3;
            sregs.cr4 = CR4_PAE | CR4_PGE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA | EFER_SCE | EFER_NX;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_starts_in_flat_32_bit_protected_mode_without_paging() {
        let mut sregs = kvm_sregs::default();
        initial_sregs(EntryPoint::Pvh(0x100_0000), &mut sregs);
        assert_eq!(sregs.cr0 & CR0_PG, 0);
        assert_eq!(sregs.cr0 & CR0_PE, CR0_PE);
        assert_eq!((sregs.cs.base, sregs.cs.limit), (0, 0xffff_ffff));
        assert_eq!((sregs.cs.db, sregs.cs.l), (1, 0));
        assert_eq!(sregs.cs.selector, 0x10);
        assert_eq!(sregs.ds.type_, 3);
        let regs = initial_regs(EntryPoint::Pvh(0x100_0000));
        assert_eq!((regs.rip, regs.rbx), (0x100_0000, PVH_START_INFO_ADDR));
    }

    #[test]
    fn linux64_starts_in_long_mode_with_our_page_tables() {
        let mut sregs = kvm_sregs::default();
        initial_sregs(EntryPoint::Linux64(0x100_0200), &mut sregs);
        assert_eq!(sregs.cr3, PML4_ADDR);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.l, sregs.cs.db), (1, 0));
        assert_eq!(initial_regs(EntryPoint::Linux64(0)).rsi, ZERO_PAGE_ADDR);
    }

    #[test]
    fn application_processors_start_in_long_mode_where_the_guest_asked() {
        let start = ApStart {
            rip: 0xffff_ffff_8100_0040,
            rsp: 0xffff_c900_0001_3f58,
            cr3: 0x200_a000,
        };
        let mut sregs = kvm_sregs::default();
        initial_sregs(EntryPoint::Ap64(start), &mut sregs);
        assert_eq!(sregs.cr3, 0x200_a000);
        assert_eq!((sregs.cs.l, sregs.cs.db), (1, 0));
        assert_eq!(sregs.efer & EFER_NX, EFER_NX);
        let regs = initial_regs(EntryPoint::Ap64(start));
        assert_eq!((regs.rip, regs.rsp), (start.rip, start.rsp));
    }

    #[test]
    fn tss_descriptor_is_a_busy_present_tss() {
        let tr = segment(TSS);
        assert_eq!((tr.type_, tr.present, tr.s), (11, 1, 0));
    }
}
