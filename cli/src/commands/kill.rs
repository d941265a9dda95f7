//! `vmpod kill`: a signal to a background container's main process.

use crate::containers::running;
use crate::launch::CONTAINER;
use crate::{chain, Failure};
use vmpod_protocol::RequestBody;

/// "KILL", "SIGKILL", "9" → 9.
fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

pub fn kill(reference: &str, signal: &str) -> Result<i32, Failure> {
    let signal = parse_signal(signal).ok_or_else(|| {
        Failure::runtime(format!(
            "-s '{signal}' is not a signal (a name like TERM or a number 1-64)"
        ))
    })?;
    let (record, endpoint) = running(reference)?;
    let mut client = endpoint
        .control()
        .map_err(|e| Failure::runtime(chain(&e)))?;
    client
        .call(RequestBody::SignalProcess {
            container_id: CONTAINER.into(),
            exec_id: None,
            signal,
            all: false,
        })
        .map_err(|e| Failure::runtime(format!("signal {}: {}", record.id, chain(&e))))?;
    println!("{}", record.id);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_signal;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("10"), Some(10));
        for bad in ["0", "65", "BOGUS", ""] {
            assert_eq!(parse_signal(bad), None, "{bad}");
        }
    }
}
