//! `vmpod logs`: a background container's output, as the monitor wrote it to its log files.

use crate::containers::{dir_of, find, monitor_alive};
use crate::Failure;
use std::io::Write;
use std::time::Duration;

pub fn logs(reference: &str, follow: bool) -> Result<i32, Failure> {
    let record = find(reference)?;
    let dir = dir_of(&record.id);
    let open = |name: &str| std::fs::File::open(dir.join(name)).ok();
    let (mut out, mut err) = (open("stdout.log"), open("stderr.log"));
    loop {
        for (file, sink) in [
            (&mut out, &mut std::io::stdout() as &mut dyn Write),
            (&mut err, &mut std::io::stderr() as &mut dyn Write),
        ] {
            if let Some(f) = file {
                let _ = std::io::copy(f, sink);
                let _ = sink.flush();
            }
        }
        if !follow || !monitor_alive(record.monitor_pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the monitor wrote between the last read and its exit.
    for (file, sink) in [
        (&mut out, &mut std::io::stdout() as &mut dyn Write),
        (&mut err, &mut std::io::stderr() as &mut dyn Write),
    ] {
        if let Some(f) = file {
            let _ = std::io::copy(f, sink);
        }
    }
    Ok(0)
}
