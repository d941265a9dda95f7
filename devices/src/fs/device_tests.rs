//! The virtio-fs device over guest memory built by the test: config space, chains (well and
//! badly formed), the high-priority queue and reset.

use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::abi::{self, opcode, read_struct, ROOT_ID};
use super::request::tests::request;
use super::tests::Session;
use super::*;
use crate::testing::*;

const REQ: u64 = 0x10_0000;
const REPLY: u64 = 0x20_0000;

fn device(s: &Session) -> VirtioFs {
    VirtioFs::new("vmpod", &s.share()).unwrap()
}

/// Puts `req` at REQ, runs one chain on `queue`, returns (used length, reply bytes).
fn run(fs: &mut VirtioFs, index: usize, descs: &[Desc], req: &[u8]) -> (u32, Vec<u8>) {
    let mem = guest_memory();
    mem.write_slice(req, GuestAddress(REQ)).unwrap();
    let (queue, mock) = queue_with_chain(&mem, descs);
    let idle = || <virtio_queue::Queue as virtio_queue::QueueT>::new(16).unwrap();
    let mut queues = if index == 0 {
        vec![queue, idle()]
    } else {
        vec![idle(), queue]
    };
    fs.process_queue(index, &mut queues, &mem).unwrap();
    assert_eq!(used_idx(&mem, &mock), 1, "chain not returned");
    let len = used_len(&mem, &mock, 0);
    let mut reply = vec![0u8; len as usize];
    mem.read_slice(&mut reply, GuestAddress(REPLY)).unwrap();
    (len, reply)
}

fn init_request() -> Vec<u8> {
    let init = abi::InitIn {
        major: 7,
        minor: 36,
        max_readahead: 0,
        flags: 0,
    };
    request(opcode::INIT, 0, &[init.as_slice()])
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let s = Session::new();
    let fs = device(&s);
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes().len(), 2);
    let mut config = [0xffu8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..5], b"vmpod");
    assert!(config[5..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(config[36..40].try_into().unwrap()), 1);
    assert!(matches!(
        VirtioFs::new(&"t".repeat(37), &s.share()),
        Err(FsError::Tag(_))
    ));
    assert!(matches!(
        VirtioFs::new("", &s.share()),
        Err(FsError::Tag(_))
    ));
}

#[test]
fn init_over_the_request_queue_is_answered_with_an_exact_length() {
    let s = Session::new();
    let mut fs = device(&s);
    let req = init_request();
    let (len, reply) = run(
        &mut fs,
        1,
        &[(REQ, req.len() as u32, false), (REPLY, 4096, true)],
        &req,
    );
    assert_eq!(len, 16 + 64);
    let header: abi::OutHeader = read_struct(&reply).unwrap();
    assert_eq!((header.len, header.error), (80, 0));
}

#[test]
fn short_header_chain_is_returned_with_zero_length() {
    let s = Session::new();
    let mut fs = device(&s);
    let req = init_request();
    let (len, _) = run(&mut fs, 1, &[(REQ, 20, false), (REPLY, 4096, true)], &req);
    assert_eq!(len, 0);
}

#[test]
fn length_larger_than_the_chain_gets_einval() {
    let s = Session::new();
    let mut fs = device(&s);
    let req = init_request();
    // The header claims 80 bytes; the chain carries 60 of them.
    let (len, reply) = run(&mut fs, 1, &[(REQ, 60, false), (REPLY, 4096, true)], &req);
    assert_eq!(len, 16);
    assert_eq!(
        read_struct::<abi::OutHeader>(&reply).unwrap().error,
        -libc::EINVAL
    );
}

#[test]
fn chain_larger_than_any_request_gets_einval_without_reading_it_all() {
    let s = Session::new();
    let mut fs = device(&s);
    let req = init_request();
    let huge = (MAX_REQUEST + 1) as u32;
    let (len, reply) = run(
        &mut fs,
        1,
        &[(REQ, huge, false), (REPLY + 0x20_0000, 4096, true)],
        &req,
    );
    assert_eq!(len, 16);
    assert!(reply.len() == 16);
}

#[test]
fn reply_room_smaller_than_a_header_gets_nothing() {
    let s = Session::new();
    let mut fs = device(&s);
    let req = init_request();
    let (len, _) = run(
        &mut fs,
        1,
        &[(REQ, req.len() as u32, false), (REPLY, 8, true)],
        &req,
    );
    assert_eq!(len, 0);
}

#[test]
fn reply_larger_than_the_room_is_erange() {
    let s = Session::new();
    let mut fs = device(&s);
    let req = init_request();
    let (len, reply) = run(
        &mut fs,
        1,
        &[(REQ, req.len() as u32, false), (REPLY, 40, true)],
        &req,
    );
    assert_eq!(len, 16);
    assert_eq!(
        read_struct::<abi::OutHeader>(&reply).unwrap().error,
        -libc::ERANGE
    );
}

#[test]
fn hiprio_queue_serves_forget_and_ignores_anything_else() {
    let s = Session::new();
    let mut fs = device(&s);
    let req = init_request();
    let (len, _) = run(
        &mut fs,
        0,
        &[(REQ, req.len() as u32, false), (REPLY, 4096, true)],
        &req,
    );
    assert_eq!(len, 0, "INIT is not served on hiprio");
    let forget = request(
        opcode::FORGET,
        5,
        &[abi::ForgetIn { nlookup: 1 }.as_slice()],
    );
    let (len, _) = run(&mut fs, 0, &[(REQ, forget.len() as u32, false)], &forget);
    assert_eq!(len, 0);
}

#[test]
fn reset_drops_every_handle() {
    let mut s = Session::new();
    s.create(ROOT_ID, "f", 0o644);
    let mut fs = device(&s);
    let req = init_request();
    run(
        &mut fs,
        1,
        &[(REQ, req.len() as u32, false), (REPLY, 4096, true)],
        &req,
    );
    let create = abi::CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        ..Default::default()
    };
    let req = request(opcode::CREATE, ROOT_ID, &[create.as_slice(), b"g\0"]);
    let (len, _) = run(
        &mut fs,
        1,
        &[(REQ, req.len() as u32, false), (REPLY, 4096, true)],
        &req,
    );
    assert_eq!(len, 16 + 128 + 16);
    assert_eq!(fs.server().filesystem().open_handles(), 1);
    fs.reset();
    assert_eq!(fs.server().filesystem().open_handles(), 0);
    assert_eq!(fs.server().filesystem().known_inodes(), 1);
}
