//! `vmpod-vhost-user`: serves vmpod devices to a vhost-user front end (QEMU), each on its
//! Unix socket, until every front end disconnects.
//!
//!   vmpod-vhost-user --socket blk.sock --blk disk.img[,ro][,serial=ID]
//!   vmpod-vhost-user --blk [PATH][,ro][,serial=ID],socket=SOCK --blk ...   (several disks)
//!   vmpod-vhost-user --socket rng.sock --rng
//!   vmpod-vhost-user --socket vsock.sock --vsock CID,UDS_PATH
//!   vmpod-vhost-user --socket net.sock --net TAP[,netns=PATH]
//!
//! Disks are slots numbered in the order given: `insert SLOT PATH` and `eject SLOT` lines on
//! stdin change a read-only disk's image while the guest runs, each answered on stdout with
//! `ok` or `error: ...` once the front end has been told (devices/src/slot_command.rs). A
//! disk given without a PATH starts empty.
//!
//! Once its devices are open and its sockets listen, the process confines itself with one
//! seccomp filter for all its threads (devices/src/vhost_user_seccomp.rs); the hidden
//! `--no-seccomp` leaves it off, for debugging only.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmpod_devices::block::{Block, DiskSlot};
use vmpod_devices::net::{Net, Tap};
use vmpod_devices::rng::Rng;
use vmpod_devices::slot_command::{reply, SlotCommand};
use vmpod_devices::vhost_user::{ConfigNotifier, Served};
use vmpod_devices::vsock::Vsock;

/// The config space (and so the MAC) belongs to the vhost-user front end; ours goes unused.
const DEFAULT_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];

#[derive(Parser, Debug)]
#[command(
    name = "vmpod-vhost-user",
    version,
    about = "Serves vmpod virtio devices over vhost-user"
)]
struct Args {
    /// The vhost-user socket to listen on (the front end connects to it); a disk may name
    /// its own with socket=.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// virtio-blk backed by a file: [PATH][,ro][,serial=ID][,socket=SOCK]; repeat for more
    /// disks. Without a PATH the disk is an empty read-only slot.
    #[arg(long, conflicts_with_all = ["rng", "vsock"])]
    blk: Vec<String>,
    /// virtio-rng fed from the host's getrandom.
    #[arg(long, conflicts_with = "vsock")]
    rng: bool,
    /// virtio-vsock: CID,UDS_PATH (hybrid vsock host socket, as vmpod-vmm's "vsock").
    #[arg(long, conflicts_with = "net")]
    vsock: Option<String>,
    /// virtio-net on a tap: TAP[,netns=PATH] (the front end keeps the MAC).
    #[arg(long)]
    net: Option<String>,
    /// Debugging only: leave the seccomp filter off.
    #[arg(long, hide = true)]
    no_seccomp: bool,
}

/// Confines every thread of the process, unless `--no-seccomp` says not to.
fn confine(args: &Args) -> Result<(), String> {
    if args.no_seccomp {
        return Ok(());
    }
    vmpod_devices::vhost_user_seccomp::filter()
        .and_then(|filter| filter.apply_to_process())
        .map_err(|e| e.to_string())
}

impl Args {
    fn socket(&self) -> Result<PathBuf, String> {
        self.socket
            .clone()
            .ok_or_else(|| "--socket is missing".to_string())
    }
}

/// One `--blk` disk: the device, its socket and the handle to its image.
fn disk(spec: &str, default_socket: Option<&PathBuf>) -> Result<(Served, DiskSlot), String> {
    let mut parts = spec.split(',');
    let path = parts.next().filter(|p| !p.is_empty());
    let (mut read_only, mut serial, mut socket) = (false, None, default_socket.cloned());
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => read_only = true,
            Some(("serial", id)) => serial = Some(id),
            Some(("socket", path)) => socket = Some(PathBuf::from(path)),
            _ => {
                return Err(format!(
                    "unknown --blk option '{option}' (ro, serial=ID, socket=PATH)"
                ))
            }
        }
    }
    let socket = socket.ok_or_else(|| format!("--blk {spec}: no socket= and no --socket"))?;
    let block = match path {
        Some(path) => Block::open(path.as_ref(), read_only, serial),
        None if read_only => Block::empty(serial),
        None => return Err(format!("--blk {spec}: a disk without an image must be ro")),
    }
    .map_err(|e| e.to_string())?;
    let slot = block.slot();
    let served = Served {
        name: "vmpod-blk",
        device: Box::new(block),
        socket,
    };
    Ok((served, slot))
}

/// Carries out the slot commands arriving on stdin, one answer line each on stdout.
fn serve_commands(slots: Vec<Option<DiskSlot>>, notifiers: Vec<ConfigNotifier>) {
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let result = SlotCommand::parse(&line).and_then(|command| {
            command.apply(&slots)?;
            Ok(command.slot())
        });
        let answer = match result {
            Ok(slot) => match notifiers[slot].announce() {
                Ok(()) => "ok\n".to_string(),
                Err(e) => format!("error: slot {slot}: cannot tell the front end: {e}\n"),
            },
            Err(e) => reply(&Err(e)),
        };
        if out
            .write_all(answer.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

fn device(args: &Args) -> Result<Served, String> {
    if args.rng {
        return Ok(Served {
            name: "vmpod-rng",
            device: Box::new(Rng::new()),
            socket: args.socket()?,
        });
    }
    if let Some(spec) = &args.vsock {
        let (cid, path) = spec.split_once(',').ok_or("--vsock takes CID,UDS_PATH")?;
        let cid: u64 = cid
            .parse()
            .ok()
            .filter(|c| *c >= 3)
            .ok_or_else(|| format!("--vsock CID must be a number of 3 or more, not '{cid}'"))?;
        let vsock = Vsock::new(cid, path.as_ref()).map_err(|e| e.to_string())?;
        return Ok(Served {
            name: "vmpod-vsock",
            device: Box::new(vsock),
            socket: args.socket()?,
        });
    }
    if let Some(spec) = &args.net {
        let mut parts = spec.split(',');
        let name = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("--net needs a tap name")?;
        let mut netns = None;
        for option in parts {
            match option.split_once('=') {
                Some(("netns", path)) => netns = Some(PathBuf::from(path)),
                _ => return Err(format!("unknown --net option '{option}' (netns=PATH)")),
            }
        }
        let tap = Tap::open(name, netns.as_deref()).map_err(|e| e.to_string())?;
        let net = Net::new(tap, DEFAULT_MAC).map_err(|e| e.to_string())?;
        return Ok(Served {
            name: "vmpod-net",
            device: Box::new(net),
            socket: args.socket()?,
        });
    }
    Err("name a device: --blk, --rng, --vsock or --net".to_string())
}

fn serve(args: &Args) -> Result<(), String> {
    if args.blk.is_empty() {
        let (server, _) =
            vmpod_devices::vhost_user::bind(vec![device(args)?]).map_err(|e| e.to_string())?;
        confine(args)?;
        return server.run().map_err(|e| e.to_string());
    }
    let mut served = Vec::with_capacity(args.blk.len());
    let mut slots = Vec::with_capacity(args.blk.len());
    for spec in &args.blk {
        let (device, slot) = disk(spec, args.socket.as_ref())?;
        served.push(device);
        slots.push(Some(slot));
    }
    let (server, notifiers) = vmpod_devices::vhost_user::bind(served).map_err(|e| e.to_string())?;
    // Detached: it ends with the process, once every front end has gone. Started, and past
    // its start-up (rseq, robust list, signal stack), before the filter goes on: clone and
    // those are not in it. TSYNC confines it with the rest.
    let (started, running) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = started.send(());
        serve_commands(slots, notifiers)
    });
    let _ = running.recv();
    confine(args)?;
    server.run().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // A core dump or a debugger of the same uid would read guest memory (it maps it all).
    // SAFETY: prctl with integer arguments changes only this process's attributes.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    let result = serve(&args);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmpod-vhost-user: {e}");
            ExitCode::from(1)
        }
    }
}
