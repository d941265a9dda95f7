//! virtio-blk backed by a file: read, write (unless read-only), flush and get-id.
//!
//! Data moves through one bounded bounce buffer, so a request's size costs time, never memory,
//! and every request is checked against the disk's end before anything is read or written.
//!
//! A disk is also a slot: its image can be swapped while the guest runs ([`DiskSlot`]), the
//! model of Firecracker's "update a drive's backing file". An empty slot reads as a disk of
//! capacity 0; the transport announces each change with a config-change interrupt and the
//! guest's driver reads the new capacity.
//!
//! (Over 600 lines with its unit tests; the device itself is about 350.)

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_blk::{
    self, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Queue, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use crate::virtio::{
    read_config_bytes, serve_queue, QueueError, UsedQueues, VirtioDevice, COMMON_FEATURES,
    DEVICE_TYPE_BLOCK,
};

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
const BOUNCE_BUFFER: usize = 64 << 10;
/// The GET_ID answer is exactly this long (NUL-padded, not terminated when full).
pub const ID_LEN: usize = 20;

const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << virtio_blk::VIRTIO_BLK_F_SEG_MAX;
const VIRTIO_BLK_F_RO: u64 = 1 << virtio_blk::VIRTIO_BLK_F_RO;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << virtio_blk::VIRTIO_BLK_F_FLUSH;

/// The status byte the device writes last; the bindings' values, as that byte.
const VIRTIO_BLK_S_OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
const VIRTIO_BLK_S_IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
const VIRTIO_BLK_S_UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk {path}: not a regular file or block device")]
    NotADisk { path: PathBuf },
    #[error("disk serial {serial:?} is longer than {ID_LEN} bytes")]
    SerialTooLong { serial: String },
}

/// The image behind a disk.
struct Image {
    file: File,
    sectors: u64,
}

impl Image {
    fn open(path: &Path, read_only: bool) -> Result<Image, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Image::measure(file, path)
    }

    /// An image opened by someone else; `path` names it in errors.
    fn measure(file: File, path: &Path) -> Result<Image, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(open_err)?;
        use std::os::unix::fs::FileTypeExt;
        let size = if meta.is_file() {
            meta.len()
        } else if meta.file_type().is_block_device() {
            // A block device's metadata says 0; its end is where a seek to the end lands.
            std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).map_err(open_err)?
        } else {
            return Err(BlockError::NotADisk {
                path: path.to_path_buf(),
            });
        };
        Ok(Image {
            file,
            sectors: size / SECTOR_SIZE,
        })
    }
}

type Medium = Arc<Mutex<Option<Image>>>;

fn lock(medium: &Medium) -> MutexGuard<'_, Option<Image>> {
    medium.lock().unwrap_or_else(|p| p.into_inner())
}

/// A disk's slot, for changing its image from another thread while the device serves the
/// guest. The swap waits for a request in progress, so no request reads from two images.
#[derive(Clone)]
pub struct DiskSlot {
    medium: Medium,
    read_only: bool,
}

impl DiskSlot {
    /// Puts `path` in the slot (replacing what was there); returns its capacity in sectors.
    /// The file is opened and measured before the slot changes, so a bad image leaves it as
    /// it was.
    pub fn insert(&self, path: &Path) -> Result<u64, BlockError> {
        let image = Image::open(path, self.read_only)?;
        Ok(self.put(image))
    }

    /// As [`DiskSlot::insert`], with the image opened by the caller (a process that cannot
    /// open files itself receives it over a socket); `path` names it in errors. A slot is
    /// read-only, so the file needs to be open for reading only.
    pub fn insert_file(&self, file: File, path: &Path) -> Result<u64, BlockError> {
        let image = Image::measure(file, path)?;
        Ok(self.put(image))
    }

    fn put(&self, image: Image) -> u64 {
        let sectors = image.sectors;
        *lock(&self.medium) = Some(image);
        sectors
    }

    /// Empties the slot: the disk reads as capacity 0 and every request fails until the next
    /// insert.
    pub fn eject(&self) {
        lock(&self.medium).take();
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.medium).is_none()
    }
}

pub struct Block {
    medium: Medium,
    read_only: bool,
    id: [u8; ID_LEN],
    bounce: Vec<u8>,
}

fn serial_id(serial: Option<&str>) -> Result<[u8; ID_LEN], BlockError> {
    let mut id = [0u8; ID_LEN];
    if let Some(serial) = serial {
        if serial.len() > ID_LEN {
            return Err(BlockError::SerialTooLong {
                serial: serial.to_string(),
            });
        }
        id[..serial.len()].copy_from_slice(serial.as_bytes());
    }
    Ok(id)
}

impl Block {
    /// Opens the disk image. `serial` is what the guest reads as the disk's id
    /// (/sys/block/vdX/serial).
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Block, BlockError> {
        let id = serial_id(serial)?;
        let image = Image::open(path, read_only)?;
        Ok(Block::with_medium(Some(image), read_only, id))
    }

    /// A read-only disk with no image yet (capacity 0): a slot to insert one into later,
    /// through [`Block::slot`]. The serial stays the slot's whatever image it holds.
    pub fn empty(serial: Option<&str>) -> Result<Block, BlockError> {
        Ok(Block::with_medium(None, true, serial_id(serial)?))
    }

    fn with_medium(image: Option<Image>, read_only: bool, id: [u8; ID_LEN]) -> Block {
        Block {
            medium: Arc::new(Mutex::new(image)),
            read_only,
            id,
            // Allocated on first use: an empty slot that is never read costs no buffer.
            bounce: Vec::new(),
        }
    }

    /// The handle that swaps this disk's image while the guest runs.
    pub fn slot(&self) -> DiskSlot {
        DiskSlot {
            medium: Arc::clone(&self.medium),
            read_only: self.read_only,
        }
    }

    fn capacity_sectors(&self) -> u64 {
        lock(&self.medium).as_ref().map_or(0, |i| i.sectors)
    }

    /// Serves one request; returns the bytes written into the guest's buffers (status included).
    fn serve(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem))
        else {
            tracing::debug!("virtio-blk: chain with unusable buffers");
            return 0;
        };
        // The status byte is the last writable byte; without one nothing can be reported.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            tracing::debug!("virtio-blk: request without a status byte");
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(data_len) else {
            return 0;
        };
        if self.bounce.is_empty() {
            self.bounce = vec![0; BOUNCE_BUFFER];
        }
        let medium = lock(&self.medium);
        let mut transfer = Transfer {
            image: medium.as_ref(),
            read_only: self.read_only,
            bounce: &mut self.bounce,
        };
        let status = match read_header(&mut reader) {
            Some((VIRTIO_BLK_T_IN, sector)) => transfer.read(sector, &mut writer),
            Some((VIRTIO_BLK_T_OUT, sector)) => transfer.write(sector, &mut reader),
            Some((VIRTIO_BLK_T_FLUSH, _)) => transfer.flush(),
            Some((VIRTIO_BLK_T_GET_ID, _)) => {
                let n = writer.available_bytes().min(ID_LEN);
                match writer.write_all(&self.id[..n]) {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
            Some(_) => VIRTIO_BLK_S_UNSUPP,
            None => VIRTIO_BLK_S_IOERR,
        };
        drop(medium);
        let _ = status_writer.write_all(&[status]);
        (writer.bytes_written() + status_writer.bytes_written()) as u32
    }
}

/// One request's access to the image the slot holds while it is served.
struct Transfer<'a> {
    image: Option<&'a Image>,
    read_only: bool,
    bounce: &'a mut [u8],
}

impl<'a> Transfer<'a> {
    /// The image and the byte offset of a transfer, if it lies within the disk.
    fn range(&self, sector: u64, len: usize) -> Option<(&'a Image, u64)> {
        let image = self.image?;
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len as u64)?;
        (end <= image.sectors * SECTOR_SIZE).then_some((image, start))
    }

    fn read(&mut self, sector: u64, writer: &mut Writer) -> u8 {
        let Some((image, mut offset)) = self.range(sector, writer.available_bytes()) else {
            return VIRTIO_BLK_S_IOERR;
        };
        while writer.available_bytes() > 0 {
            let n = writer.available_bytes().min(self.bounce.len());
            let chunk = &mut self.bounce[..n];
            if image.file.read_exact_at(chunk, offset).is_err() || writer.write_all(chunk).is_err()
            {
                return VIRTIO_BLK_S_IOERR;
            }
            offset += n as u64;
        }
        VIRTIO_BLK_S_OK
    }

    fn write(&mut self, sector: u64, reader: &mut Reader) -> u8 {
        if self.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let Some((image, mut offset)) = self.range(sector, reader.available_bytes()) else {
            return VIRTIO_BLK_S_IOERR;
        };
        while reader.available_bytes() > 0 {
            let n = reader.available_bytes().min(self.bounce.len());
            let chunk = &mut self.bounce[..n];
            if reader.read_exact(chunk).is_err() || image.file.write_all_at(chunk, offset).is_err()
            {
                return VIRTIO_BLK_S_IOERR;
            }
            offset += n as u64;
        }
        VIRTIO_BLK_S_OK
    }

    fn flush(&mut self) -> u8 {
        match self.image {
            _ if self.read_only => VIRTIO_BLK_S_OK,
            Some(image) if image.file.sync_data().is_ok() => VIRTIO_BLK_S_OK,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// The request header: type (u32), reserved (u32), sector (u64), all little-endian.
fn read_header(reader: &mut Reader) -> Option<(u32, u64)> {
    let mut header = [0u8; 16];
    reader.read_exact(&mut header).ok()?;
    let kind = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let sector = u64::from_le_bytes(header[8..16].try_into().ok()?);
    Some((kind, sector))
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        COMMON_FEATURES | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio_blk_config: capacity (u64) then size_max (u32) and seg_max (u32).
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        config[12..].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        serve_queue(index, queues, mem, |chain| self.serve(chain, mem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use vm_memory::{Bytes, GuestAddress};

    const HEADER: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    struct Disk {
        path: PathBuf,
    }

    impl Disk {
        fn new(name: &str, contents: &[u8]) -> Disk {
            let path =
                std::env::temp_dir().join(format!("vmpod-blk-{name}-{}.img", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Disk { path }
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    impl Drop for Disk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&sector.to_le_bytes());
        mem.write_slice(&bytes, GuestAddress(HEADER)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn run(block: &mut Block, mem: &GuestMemoryMmap, descs: &[Desc]) -> u32 {
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let (mut queue, mock) = queue_with_chain(mem, descs);
        assert!(!block
            .process_queue(0, std::slice::from_mut(&mut queue), mem)
            .unwrap()
            .is_empty());
        assert_eq!(used_idx(mem, &mock), 1, "chain not returned");
        used_len(mem, &mock, 0)
    }

    #[test]
    fn read_returns_the_disk_bytes_in_split_buffers() {
        let disk = Disk::new("read", &pattern(8192));
        let mut block = Block::open(&disk.path, true, None).unwrap();
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_IN, 2);
        let len = run(
            &mut block,
            &mem,
            &[
                (HEADER, 16, false),
                (DATA, 512, true),
                (DATA + 4096, 1024, true),
                (STATUS, 1, true),
            ],
        );
        assert_eq!((len, status(&mem)), (1537, VIRTIO_BLK_S_OK));
        let mut got = vec![0u8; 1536];
        mem.read_slice(&mut got[..512], GuestAddress(DATA)).unwrap();
        mem.read_slice(&mut got[512..], GuestAddress(DATA + 4096))
            .unwrap();
        assert_eq!(got, pattern(8192)[1024..2560]);
    }

    #[test]
    fn write_lands_in_the_file() {
        let disk = Disk::new("write", &[0u8; 4096]);
        let mut block = Block::open(&disk.path, false, None).unwrap();
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_OUT, 1);
        mem.write_slice(&pattern(1024), GuestAddress(DATA)).unwrap();
        run(
            &mut block,
            &mem,
            &[(HEADER, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let contents = disk.contents();
        assert_eq!(&contents[512..1536], &pattern(1024)[..]);
        assert!(contents[..512].iter().all(|&b| b == 0));
    }

    #[test]
    fn write_to_a_read_only_disk_fails_and_leaves_the_file_alone() {
        let disk = Disk::new("ro", &[0u8; 4096]);
        let mut block = Block::open(&disk.path, true, None).unwrap();
        assert_ne!(block.features() & VIRTIO_BLK_F_RO, 0);
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        run(
            &mut block,
            &mem,
            &[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(disk.contents(), vec![0u8; 4096]);
    }

    #[test]
    fn transfers_past_the_end_of_the_disk_fail() {
        let disk = Disk::new("end", &[0u8; 4096]);
        let mut block = Block::open(&disk.path, false, None).unwrap();
        let mem = guest_memory();
        for sector in [7, 8, u64::MAX / 512, u64::MAX] {
            header(&mem, VIRTIO_BLK_T_IN, sector);
            run(
                &mut block,
                &mem,
                &[(HEADER, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
            );
            assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR, "sector {sector}");
        }
    }

    #[test]
    fn get_id_returns_the_configured_serial() {
        let disk = Disk::new("id", &[0u8; 512]);
        let mut block = Block::open(&disk.path, true, Some("layer-3f2a")).unwrap();
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        run(
            &mut block,
            &mem,
            &[(HEADER, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..10], b"layer-3f2a");
        assert!(id[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn serial_longer_than_twenty_bytes_is_refused_naming_the_disk() {
        let disk = Disk::new("longid", &[0u8; 512]);
        let err = Block::open(&disk.path, true, Some("x".repeat(21).as_str()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("is longer than 20 bytes"), "{err}");
    }

    #[test]
    fn flush_and_unknown_types_report_their_status() {
        let disk = Disk::new("flush", &[0u8; 512]);
        let mut block = Block::open(&disk.path, false, None).unwrap();
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        run(&mut block, &mem, &[(HEADER, 16, false), (STATUS, 1, true)]);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        header(&mem, 77, 0);
        run(&mut block, &mem, &[(HEADER, 16, false), (STATUS, 1, true)]);
        assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn short_header_is_an_io_error_not_a_panic() {
        let disk = Disk::new("short", &[0u8; 512]);
        let mut block = Block::open(&disk.path, false, None).unwrap();
        let mem = guest_memory();
        run(&mut block, &mem, &[(HEADER, 7, false), (STATUS, 1, true)]);
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn request_without_writable_status_is_returned_unanswered() {
        let disk = Disk::new("nostatus", &[0u8; 512]);
        let mut block = Block::open(&disk.path, false, None).unwrap();
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut block, &mem, &[(HEADER, 16, false)]), 0);
    }

    #[test]
    fn wrong_direction_buffers_fail_the_request() {
        let disk = Disk::new("dir", &pattern(4096));
        let mut block = Block::open(&disk.path, false, None).unwrap();
        let mem = guest_memory();
        // A read whose data buffer is device-readable: no writable room but the status byte.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let (mut queue, mock) = queue_with_chain(
            &mem,
            &[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        block
            .process_queue(0, std::slice::from_mut(&mut queue), &mem)
            .unwrap();
        assert_eq!(used_len(&mem, &mock, 0), 1);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK, "zero-length read is fine");
        assert_eq!(disk.contents(), pattern(4096));
    }

    #[test]
    fn capacity_is_in_the_config_space() {
        let disk = Disk::new("cap", &[0u8; 8192]);
        let block = Block::open(&disk.path, true, None).unwrap();
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 16);
        let mut past = [0xffu8; 4];
        block.read_config(4096, &mut past);
        assert_eq!(past, [0; 4]);
    }

    fn capacity(block: &Block) -> u64 {
        let mut bytes = [0u8; 8];
        block.read_config(0, &mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// Reads sector 0 into a 512-byte buffer: (status, the bytes).
    fn read_first_sector(block: &mut Block, mem: &GuestMemoryMmap) -> (u8, Vec<u8>) {
        header(mem, VIRTIO_BLK_T_IN, 0);
        mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
        run(
            block,
            mem,
            &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        (status(mem), got)
    }

    #[test]
    fn a_slot_reads_empty_then_each_inserted_image_and_empty_again_after_eject() {
        let first = Disk::new("slot-a", &[0xaa; 8192]);
        let second = Disk::new("slot-b", &[0xbb; 4096]);
        let mut block = Block::empty(Some("slot3")).unwrap();
        let slot = block.slot();
        let mem = guest_memory();
        assert_eq!(capacity(&block), 0);
        assert!(slot.is_empty());
        assert_eq!(read_first_sector(&mut block, &mem).0, VIRTIO_BLK_S_IOERR);

        assert_eq!(slot.insert(&first.path).unwrap(), 16);
        assert_eq!(capacity(&block), 16);
        assert_eq!(
            read_first_sector(&mut block, &mem),
            (VIRTIO_BLK_S_OK, vec![0xaa; 512])
        );

        slot.eject();
        assert!(slot.is_empty());
        assert_eq!(capacity(&block), 0, "an ejected slot announces no capacity");
        assert_eq!(read_first_sector(&mut block, &mem).0, VIRTIO_BLK_S_IOERR);

        slot.insert(&second.path).unwrap();
        assert_eq!(capacity(&block), 8);
        assert_eq!(
            read_first_sector(&mut block, &mem),
            (VIRTIO_BLK_S_OK, vec![0xbb; 512]),
            "the other image, not a cached block of the first"
        );
    }

    #[test]
    fn a_slot_keeps_its_serial_and_stays_read_only_whatever_it_holds() {
        let disk = Disk::new("slot-ro", &[0u8; 4096]);
        let mut block = Block::empty(Some("slot0")).unwrap();
        block.slot().insert(&disk.path).unwrap();
        assert_ne!(block.features() & VIRTIO_BLK_F_RO, 0);
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        mem.write_slice(&[0xcc; 512], GuestAddress(DATA)).unwrap();
        run(
            &mut block,
            &mem,
            &[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(disk.contents(), vec![0u8; 4096]);
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        run(
            &mut block,
            &mem,
            &[(HEADER, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        let mut id = [0u8; 5];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"slot0");
    }

    #[test]
    fn a_missing_image_or_a_directory_leaves_the_slot_as_it_was() {
        let disk = Disk::new("slot-keep", &[0x11; 4096]);
        let mut block = Block::empty(None).unwrap();
        let slot = block.slot();
        slot.insert(&disk.path).unwrap();
        let err = slot
            .insert(Path::new("/nonexistent/layer.erofs"))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("disk /nonexistent/layer.erofs: "),
            "{err}"
        );
        let err = slot.insert(&std::env::temp_dir()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let mem = guest_memory();
        assert_eq!(
            read_first_sector(&mut block, &mem),
            (VIRTIO_BLK_S_OK, vec![0x11; 512])
        );
    }

    #[test]
    fn missing_disk_is_named() {
        let err = Block::open(Path::new("/nonexistent/disk.img"), true, None)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "disk /nonexistent/disk.img: No such file or directory (os error 2)"
        );
    }
}
