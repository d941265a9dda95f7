//! `vmpod-vhost-user`: serves one vmpod device to a vhost-user front end (QEMU) on a Unix
//! socket, until the front end disconnects.
//!
//!   vmpod-vhost-user --socket blk.sock --blk disk.img[,ro][,serial=ID]
//!   vmpod-vhost-user --socket rng.sock --rng
//!   vmpod-vhost-user --socket vsock.sock --vsock CID,UDS_PATH
//!   vmpod-vhost-user --socket net.sock --net TAP[,netns=PATH]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use clap::Parser;
use vmpod_devices::block::Block;
use vmpod_devices::net::{Net, Tap};
use vmpod_devices::rng::Rng;
use vmpod_devices::virtio::VirtioDevice;
use vmpod_devices::vsock::Vsock;

/// The config space (and so the MAC) belongs to the vhost-user front end; ours goes unused.
const DEFAULT_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];

#[derive(Parser, Debug)]
#[command(
    name = "vmpod-vhost-user",
    version,
    about = "Serves a vmpod virtio device over vhost-user"
)]
struct Args {
    /// The vhost-user socket to listen on (the front end connects to it).
    #[arg(long)]
    socket: PathBuf,
    /// virtio-blk backed by a file: PATH[,ro][,serial=ID][,slot]. A slot (of a restored
    /// template) reads as an empty disk until the line "insert" arrives on stdin.
    #[arg(long, conflicts_with_all = ["rng", "vsock"])]
    blk: Option<String>,
    /// virtio-rng fed from the host's getrandom.
    #[arg(long, conflicts_with = "vsock")]
    rng: bool,
    /// virtio-vsock: CID,UDS_PATH (hybrid vsock host socket, as vmpod-vmm's "vsock").
    #[arg(long, conflicts_with = "net")]
    vsock: Option<String>,
    /// virtio-net on a tap: TAP[,netns=PATH] (the front end keeps the MAC).
    #[arg(long)]
    net: Option<String>,
}

type Device = (&'static str, Box<dyn VirtioDevice>, Option<Receiver<()>>);

/// Shows the slot's disk to the guest when "insert" arrives on stdin.
fn watch_for_insert(inserted: Arc<AtomicBool>) -> Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            match line {
                Ok(l) if l.trim() == "insert" => {
                    inserted.store(true, Ordering::Release);
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(l) => eprintln!("vmpod-vhost-user: unknown command '{l}' (insert)"),
                Err(_) => return,
            }
        }
    });
    rx
}

fn device(args: &Args) -> Result<Device, String> {
    if let Some(spec) = &args.blk {
        let mut parts = spec.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("--blk needs a path")?;
        let (mut read_only, mut serial, mut slot) = (false, None, false);
        for option in parts {
            match option.split_once('=') {
                None if option == "ro" => read_only = true,
                None if option == "slot" => slot = true,
                Some(("serial", id)) => serial = Some(id),
                _ => {
                    return Err(format!(
                        "unknown --blk option '{option}' (ro, serial=ID, slot)"
                    ))
                }
            }
        }
        let block = Block::open(path.as_ref(), read_only, serial).map_err(|e| e.to_string())?;
        if slot {
            let (block, inserted) = block.as_slot();
            return Ok((
                "vmpod-blk",
                Box::new(block),
                Some(watch_for_insert(inserted)),
            ));
        }
        return Ok(("vmpod-blk", Box::new(block), None));
    }
    if args.rng {
        return Ok(("vmpod-rng", Box::new(Rng::new()), None));
    }
    if let Some(spec) = &args.vsock {
        let (cid, path) = spec.split_once(',').ok_or("--vsock takes CID,UDS_PATH")?;
        let cid: u64 = cid
            .parse()
            .ok()
            .filter(|c| *c >= 3)
            .ok_or_else(|| format!("--vsock CID must be a number of 3 or more, not '{cid}'"))?;
        let vsock = Vsock::new(cid, path.as_ref()).map_err(|e| e.to_string())?;
        return Ok(("vmpod-vsock", Box::new(vsock), None));
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
        return Ok(("vmpod-net", Box::new(net), None));
    }
    Err("name a device: --blk, --rng, --vsock or --net".to_string())
}

fn main() -> ExitCode {
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
    let result = device(&args).and_then(|(name, device, config_changes)| {
        vmpod_devices::vhost_user::serve(name, device, &args.socket, config_changes)
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmpod-vhost-user: {e}");
            ExitCode::from(1)
        }
    }
}
