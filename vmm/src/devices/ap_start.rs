//! The AP start port: a guest whose KVM cannot run an application processor's real-mode start
//! (kvm-pvm) asks the VMM to start it directly in 64-bit mode instead. One 32-bit OUT to port
//! 0x3f4 carries `APIC id << 20 | start address` (our guest kernel's `vmpod_ap_start_port`).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

pub const AP_START_PORT: u16 = 0x3f4;
/// The trampoline the guest starts APs at lives in base memory.
const START_ADDR_MASK: u32 = (1 << 20) - 1;

/// Start requests decoded from the port, handed to the waiting vCPU threads.
#[derive(Default)]
pub struct ApStarter {
    /// Indexed by APIC id (= vCPU index); taken on first use, so each AP starts once.
    waiting: Mutex<Vec<Option<Sender<u64>>>>,
}

impl ApStarter {
    /// The receiver a vCPU thread waits on for its start address.
    pub fn register(&self, apic_id: u8) -> Receiver<u64> {
        let (tx, rx) = channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let slot = apic_id as usize;
        if waiting.len() <= slot {
            waiting.resize_with(slot + 1, || None);
        }
        waiting[slot] = Some(tx);
        rx
    }

    /// Handles a guest write. The value is guest-controlled: an unknown APIC id, a vCPU started
    /// twice or a short write is ignored (the guest's own timeout reports the dead CPU).
    pub fn write(&self, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!("AP start port: ignoring a {}-byte write", data.len());
            return;
        };
        let value = u32::from_le_bytes(bytes);
        let (apic_id, start) = ((value >> 20) as usize, u64::from(value & START_ADDR_MASK));
        let sender = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(apic_id)
            .and_then(Option::take);
        match sender {
            Some(tx) => {
                tracing::debug!("starting vCPU {apic_id} at {start:#x}");
                let _ = tx.send(start);
            }
            None => tracing::warn!("AP start port: no vCPU {apic_id} waiting to start"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_starts_the_named_vcpu_at_the_given_address() {
        let starter = ApStarter::default();
        let rx = starter.register(1);
        starter.write(&((1u32 << 20) | 0x9a0f0).to_le_bytes());
        assert_eq!(rx.try_recv(), Ok(0x9a0f0));
    }

    #[test]
    fn a_vcpu_is_started_once_and_unknown_ids_are_ignored() {
        let starter = ApStarter::default();
        let rx = starter.register(1);
        starter.write(&((7u32 << 20) | 0x1000).to_le_bytes());
        starter.write(&[1, 2]);
        assert!(rx.try_recv().is_err());
        starter.write(&((1u32 << 20) | 0x1000).to_le_bytes());
        starter.write(&((1u32 << 20) | 0x2000).to_le_bytes());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![0x1000]);
    }
}
