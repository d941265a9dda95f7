//! `vmpod rm`: forgets background containers; with -f it first has running ones' monitors stop
//! them.

use crate::containers::{find, forget, monitor_alive, Status};
use crate::Failure;
use std::time::Duration;

pub fn rm(references: &[String], force: bool) -> Result<i32, Failure> {
    let mut failed = None;
    for reference in references {
        match rm_one(reference, force) {
            Ok(id) => println!("{id}"),
            Err(f) => {
                eprintln!("vmpod: {}", f.1);
                failed = Some(f.0);
            }
        }
    }
    Ok(failed.unwrap_or(0))
}

fn rm_one(reference: &str, force: bool) -> Result<String, Failure> {
    let record = find(reference)?;
    if matches!(
        record.effective_status(),
        Status::Running | Status::Starting
    ) {
        if !force {
            return Err(Failure::runtime(format!(
                "container {reference} is running: stop it with `vmpod kill` or remove it with `vmpod rm -f`"
            )));
        }
        // SAFETY: kill(2) of the monitor found by its record (checked to be ours above).
        unsafe { libc::kill(record.monitor_pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while monitor_alive(record.monitor_pid) {
            if std::time::Instant::now() > deadline {
                // SAFETY: as above; the VM dies with it (PDEATHSIG) and the janitor cleans up.
                unsafe { libc::kill(record.monitor_pid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    forget(&record);
    Ok(record.id)
}
