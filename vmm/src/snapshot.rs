//! Snapshot files: the VM's state as versioned JSON, and its memory as a raw image that every
//! restored VM maps copy-on-write (`MAP_PRIVATE`), so clones of one template share its pages
//! in the host's page cache and load them lazily.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::devices::{SerialState, SERIAL_FIFO};
use crate::memory::ram_ranges;
use crate::vstate::snapshot::{VcpuState, VmState};

pub const FORMAT: &str = "vmpod-vmm snapshot";
/// Raised whenever what is saved changes meaning; a mismatch is refused on load.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a vmpod-vmm snapshot state file: {why}")]
    Format { path: PathBuf, why: String },
    #[error("{path} is snapshot format version {found}; this vmpod-vmm reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error(
        "memory file {path} holds {found} bytes; the snapshot's {mib} MiB of RAM need {wanted}"
    )]
    MemorySize {
        path: PathBuf,
        found: u64,
        wanted: u64,
        mib: u64,
    },
    #[error("cannot map the memory file {path}: {why}")]
    Map { path: PathBuf, why: String },
    #[error("cannot read the VM's state from KVM: {0}")]
    VmState(#[from] crate::vstate::snapshot::StateError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { what, path, source }
}

#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub format: String,
    pub version: u32,
    pub memory_mib: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub devices: DevicesState,
}

/// The VMM's own devices.
#[derive(Serialize, Deserialize)]
pub struct DevicesState {
    pub serial: SerialState,
    /// The virtio-mmio transports, in the config's device order.
    #[serde(default)]
    pub virtio: Vec<crate::devices::virtio_mmio::TransportState>,
}

/// A snapshot's two files, opened at start-up, before the VMM's threads confine themselves:
/// saving only writes into them. Each is a path, created (empty), or `fd:N`, an empty file the
/// parent created and passed (a jailed VMM reaches no path outside its jail). They hold a snapshot only once the VMM has
/// exited 0; the caller moves them into place then (a template is built in a directory of
/// its own and renamed as a whole), so no reader sees half of one.
pub struct SnapshotOutput {
    state: File,
    state_path: PathBuf,
    memory: File,
    memory_path: PathBuf,
}

impl SnapshotOutput {
    pub fn create(files: &crate::config::SnapshotFiles) -> Result<SnapshotOutput, SnapshotError> {
        let create = |path: &Path| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            crate::config::open_file(path, &options).map_err(io("create", path))
        };
        Ok(SnapshotOutput {
            state: create(&files.state)?,
            state_path: files.state.clone(),
            memory: create(&files.memory)?,
            memory_path: files.memory.clone(),
        })
    }
}

/// What the event loop needs to save the VM once every vCPU has stopped and handed its state
/// over (vstate::pause): made at start-up, since no thread opens files once confined.
pub struct SnapshotRequest {
    pub vm: std::sync::Arc<crate::vstate::vm::Vm>,
    pub mem: GuestMemoryMmap,
    pub output: SnapshotOutput,
    pub memory_mib: u64,
}

impl SnapshotRequest {
    /// The stopped vCPUs' states, the VM's own (read from KVM here) and the devices', written.
    pub fn save(&self, vcpus: Vec<VcpuState>, devices: DevicesState) -> Result<(), SnapshotError> {
        let state = Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            memory_mib: self.memory_mib,
            vcpus,
            vm: crate::vstate::snapshot::save_vm(self.vm.fd())?,
            devices,
        };
        write(&state, &self.mem, &self.output)
    }
}

/// Writes the memory, then the state, each synced to the disk (fdatasync: the files were
/// created at start-up, so their data is all a reader needs).
fn write(
    state: &Snapshot,
    mem: &GuestMemoryMmap,
    output: &SnapshotOutput,
) -> Result<(), SnapshotError> {
    let memory_path = &output.memory_path;
    let mut file = &output.memory;
    for region in mem.iter() {
        // SAFETY: the region is a live mapping of `len` bytes; the vCPUs are stopped, so the
        // guest does not write it while it is copied.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) };
        file.write_all(bytes).map_err(io("write", memory_path))?;
    }
    file.sync_data().map_err(io("sync", memory_path))?;
    let json = serde_json::to_vec(state).map_err(|e| SnapshotError::Format {
        path: output.state_path.clone(),
        why: e.to_string(),
    })?;
    let mut file = &output.state;
    file.write_all(&json)
        .and_then(|()| file.sync_data())
        .map_err(io("write", &output.state_path))
}

/// Reads and checks a state file: its format and version must be ours.
pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Format {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    if header["format"] != FORMAT {
        return Err(SnapshotError::Format {
            path: path.to_path_buf(),
            why: format!("format is {}, not \"{FORMAT}\"", header["format"]),
        });
    }
    let found = header["version"].as_u64().unwrap_or(0) as u32;
    if found != VERSION {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found,
        });
    }
    let snapshot: Snapshot = serde_json::from_value(header).map_err(|e| SnapshotError::Format {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if snapshot.devices.serial.in_buffer.len() > SERIAL_FIFO {
        return Err(SnapshotError::Format {
            path: path.to_path_buf(),
            why: format!(
                "the serial FIFO holds {} bytes, more than a UART's {SERIAL_FIFO}",
                snapshot.devices.serial.in_buffer.len()
            ),
        });
    }
    if snapshot.vcpus.is_empty() {
        return Err(SnapshotError::Format {
            path: path.to_path_buf(),
            why: "it holds no vCPU".into(),
        });
    }
    Ok(snapshot)
}

/// Guest memory backed by the snapshot's memory file, private to this VM: pages are read
/// from the file when first touched and copied when first written.
pub fn map_memory(path: &Path, mib: u64) -> Result<GuestMemoryMmap, SnapshotError> {
    let file = File::open(path).map_err(io("open", path))?;
    let found = file.metadata().map_err(io("read", path))?.len();
    let wanted = mib << 20;
    if found != wanted {
        return Err(SnapshotError::MemorySize {
            path: path.to_path_buf(),
            found,
            wanted,
            mib,
        });
    }
    let map_err = |why: String| SnapshotError::Map {
        path: path.to_path_buf(),
        why,
    };
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(wanted) {
        let file = file.try_clone().map_err(io("open", path))?;
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::new(file, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, start)
            .ok_or_else(|| map_err(format!("region at {start:?} overflows")))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
}
