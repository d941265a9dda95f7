//! What a snapshot keeps of a device: one trait for every saved device (the serial port, each
//! virtio-mmio transport), so saving walks devices alike and restoring checks what a snapshot
//! file could get wrong in one place per device.

/// A device whose state a snapshot carries. `save` reads it while the VM is paused; `restore`
/// puts it into a device built from the same config, before any vCPU runs.
pub trait Persist {
    type State;
    type Error;

    fn save(&self) -> Self::State;
    fn restore(&mut self, state: &Self::State) -> Result<(), Self::Error>;
}
