//! Notes vmpod says once per host rather than on every run, where they would mix into the
//! container's own stderr. `vmpod info` says them again on demand.

use std::path::Path;

/// Where a notice leaves its mark once said.
const SAID: &str = "/var/lib/vmpod/notices";

/// Why `auto` runs QEMU with TCG on this host (slower than vmpod-vmm on hardware KVM), once.
pub fn backend_fallback_once() {
    if let Some(why) = vmpod_sandbox::backend::auto_fallback() {
        once("auto-backend", &why);
    }
}

fn once(name: &str, text: &str) {
    let dir = Path::new(SAID);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(name))
        .is_ok();
    if first {
        eprintln!("vmpod: {text} (said once per host; `vmpod info` shows it)");
    }
}
