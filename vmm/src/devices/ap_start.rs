//! The AP start port: a guest whose KVM cannot run an application processor's real-mode start
//! (kvm-pvm) asks the VMM to start it directly in 64-bit mode instead. The guest fills a start
//! request in its memory and writes the request's physical address (32 bits) to port 0x3f4
//! (our guest kernel's `vmpod_ap_start_port`). The request, little-endian:
//! `u32 apic_id, u32 reserved, u64 cr3, u64 rip, u64 rsp`.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::regs::ApStart;

pub const AP_START_PORT: u16 = 0x3f4;
const REQUEST_LEN: usize = 32;

/// Start requests read from guest memory, handed to the waiting vCPU threads.
pub struct ApStarter {
    mem: GuestMemoryMmap,
    /// Indexed by APIC id (= vCPU index); taken on first use, so each AP starts once.
    waiting: Mutex<Vec<Option<Sender<ApStart>>>>,
}

impl ApStarter {
    pub fn new(mem: GuestMemoryMmap) -> ApStarter {
        ApStarter {
            mem,
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// The receiver a vCPU thread waits on for its start request.
    pub fn register(&self, apic_id: u8) -> Receiver<ApStart> {
        let (tx, rx) = channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let slot = apic_id as usize;
        if waiting.len() <= slot {
            waiting.resize_with(slot + 1, || None);
        }
        waiting[slot] = Some(tx);
        rx
    }

    /// Handles a guest write. Everything here is guest-controlled: a short write, an address
    /// outside guest memory, an unknown APIC id or a vCPU started twice is logged and ignored
    /// (the guest kernel's own timeout then reports the CPU as dead).
    pub fn write(&self, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!("AP start port: ignoring a {}-byte write", data.len());
            return;
        };
        let addr = u64::from(u32::from_le_bytes(bytes));
        let mut request = [0u8; REQUEST_LEN];
        if let Err(e) = self.mem.read_slice(&mut request, GuestAddress(addr)) {
            tracing::warn!("AP start port: request at {addr:#x} unreadable: {e}");
            return;
        }
        let (apic_id, start) = parse_request(&request);
        let sender = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(apic_id as usize)
            .and_then(Option::take);
        match sender {
            Some(tx) => {
                tracing::debug!("starting vCPU {apic_id}: {start:x?}");
                let _ = tx.send(start);
            }
            None => tracing::warn!("AP start port: no vCPU {apic_id} waiting to start"),
        }
    }
}

fn parse_request(request: &[u8; REQUEST_LEN]) -> (u32, ApStart) {
    let u64_at = |offset: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&request[offset..offset + 8]);
        u64::from_le_bytes(word)
    };
    let apic_id = u32::from_le_bytes([request[0], request[1], request[2], request[3]]);
    let start = ApStart {
        cr3: u64_at(8),
        rip: u64_at(16),
        rsp: u64_at(24),
    };
    (apic_id, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST_ADDR: u64 = 0x2000;

    fn starter_with_request(apic_id: u32) -> ApStarter {
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        let mut request = Vec::new();
        request.extend_from_slice(&apic_id.to_le_bytes());
        request.extend_from_slice(&0u32.to_le_bytes());
        request.extend_from_slice(&0x200_a000u64.to_le_bytes());
        request.extend_from_slice(&0xffff_ffff_8100_0040u64.to_le_bytes());
        request.extend_from_slice(&0xffff_c900_0001_3f58u64.to_le_bytes());
        mem.write_slice(&request, GuestAddress(REQUEST_ADDR))
            .unwrap();
        ApStarter::new(mem)
    }

    fn port_write(addr: u64) -> [u8; 4] {
        (addr as u32).to_le_bytes()
    }

    #[test]
    fn request_in_guest_memory_starts_the_named_vcpu() {
        let starter = starter_with_request(1);
        let rx = starter.register(1);
        starter.write(&port_write(REQUEST_ADDR));
        let start = rx.try_recv().unwrap();
        assert_eq!(start.cr3, 0x200_a000);
        assert_eq!(start.rip, 0xffff_ffff_8100_0040);
        assert_eq!(start.rsp, 0xffff_c900_0001_3f58);
    }

    #[test]
    fn a_vcpu_starts_once() {
        let starter = starter_with_request(1);
        let rx = starter.register(1);
        starter.write(&port_write(REQUEST_ADDR));
        starter.write(&port_write(REQUEST_ADDR));
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn bad_requests_are_ignored() {
        let starter = starter_with_request(7);
        let rx = starter.register(1);
        starter.write(&port_write(REQUEST_ADDR)); // no vCPU 7
        starter.write(&[1, 2]); // short write
        starter.write(&port_write(0xffff_fff0)); // outside guest memory
        starter.write(&port_write((16 << 20) - 8)); // runs off the end of memory
        assert!(rx.try_recv().is_err());
    }
}
