//! The forward port without a VM: the agent serving on Unix sockets (`--listen-unix`) joins a
//! connection opened with a `ForwardHello` to a TCP port on this host's loopback.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmpod_protocol::frame::write_frame;
use vmpod_protocol::ForwardHello;

/// An agent on three sockets in a scratch directory, killed and cleaned up when dropped.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(name: &str) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix(&format!("vmpod-forward-{name}-"))
            .tempdir()
            .expect("scratch dir");
        let child = Command::new(env!("CARGO_BIN_EXE_vmpod-agent"))
            .arg("--listen-unix")
            .args(["control", "stdio", "forward"].map(|s| dir.path().join(s)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let agent = Agent { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.forward_path().exists() {
            assert!(Instant::now() < deadline, "the agent never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn forward_path(&self) -> PathBuf {
        self.dir.path().join("forward")
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(self.forward_path()).expect("connect to the forward port");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    /// Its console, once it is stopped.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let mut log = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut log);
        }
        log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_all(s: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("the connection ends, not a timeout");
    out
}

#[test]
fn a_forwarded_connection_carries_both_directions_and_each_ones_end() {
    let agent = Agent::start("relay");
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("address").port();
    // The server answers only once the request's end arrives: the host's half-close must
    // reach it through the agent.
    let served = std::thread::spawn(move || {
        let (mut c, _) = server.accept().expect("accept");
        let mut request = Vec::new();
        c.read_to_end(&mut request).expect("request");
        c.write_all(b"reply to ").expect("reply");
        c.write_all(&request).expect("reply");
    });
    let mut s = agent.connect();
    write_frame(&mut s, &ForwardHello { port }).expect("hello");
    s.write_all(&vec![b'x'; 300_000]).expect("request");
    s.shutdown(Shutdown::Write).expect("half-close");
    let reply = read_all(&mut s);
    served.join().expect("server");
    assert_eq!(&reply[..9], b"reply to ");
    assert_eq!(reply.len(), 9 + 300_000);
    assert!(reply[9..].iter().all(|&b| b == b'x'));
}

#[test]
fn a_port_nobody_listens_on_closes_the_connection() {
    let agent = Agent::start("refused");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut s = agent.connect();
    write_frame(&mut s, &ForwardHello { port }).expect("hello");
    assert!(read_all(&mut s).is_empty());
}

#[test]
fn a_bad_hello_is_refused_with_a_log_line() {
    let agent = Agent::start("bad-hello");
    let mut s = agent.connect();
    let garbage = b"{\"port\": \"eighty\"}";
    s.write_all(&(garbage.len() as u32).to_be_bytes())
        .expect("length");
    s.write_all(garbage).expect("frame");
    assert!(read_all(&mut s).is_empty());
    // The agent goes on serving.
    let mut again = agent.connect();
    write_frame(&mut again, &ForwardHello { port: 1 }).expect("hello");
    assert!(read_all(&mut again).is_empty());
    let log = agent.stop();
    assert!(log.contains("published port connection refused"), "{log}");
}
