//! `vmpod run -p`: a container's TCP port published on the host over vsock, end to end on
//! real microVMs (QEMU templates with TCG here). busybox's httpd serves; the host fetches with
//! a plain TcpStream.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody on the host listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` over HTTP/1.0 (httpd closes after the reply, so the forward's end of file is
/// exercised too): the body of a 200 reply.
fn get(port: u16, path: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
    // httpd answers "HTTP/1.1 200 OK" whatever the request's version.
    let status = text(&reply[..end]);
    (status.split_whitespace().nth(1) == Some("200")).then(|| reply[end + 4..].to_vec())
}

/// The body once the container's server answers (connections are closed until it listens).
fn get_when_up(port: u16, path: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(body) = get(port, path) {
            return body;
        }
        assert!(Instant::now() < deadline, "port {port} never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut input = child.stdin.take().expect("stdin");
    let bytes = bytes.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&bytes));
    let out = child.wait_with_output().expect("sha256sum");
    writer.join().expect("writer").expect("write to sha256sum");
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Background containers removed (`rm -f`) when the test ends, passed or not.
struct Removed(Vec<String>);

impl Drop for Removed {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = vmpod(&["rm", "-f", id], None);
        }
    }
}

/// A foreground run killed when the test ends, passed or not (the VM dies with it).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Until the sandboxes this test made are gone.
fn wait_for_nothing_left(before: (usize, usize)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while leftovers() != before {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?} {:?}",
            state_dirs(),
            records()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_published_port_serves_a_file_byte_equal_over_http() {
    let _serial = serial();
    let before = leftovers();
    let (port, unserved) = (free_port(), free_port());
    let publish = format!("127.0.0.1:{port}:80");
    let nothing_there = format!("127.0.0.1:{unserved}:81");
    let run = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args(["run", "--rm", "-p", &publish, "-p", &nothing_there])
        .args(["busybox", "sh", "-c"])
        .arg(
            "mkdir /www && head -c 1500000 /dev/urandom > /www/blob && sha256sum /www/blob \
             && exec httpd -f -p 80 -h /www",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vmpod run");
    let mut run = Killed(run);
    let mut line = String::new();
    BufReader::new(run.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the container's sha256sum");
    let expected = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(expected.len(), 64, "{line}");

    let body = get_when_up(port, "/blob");
    assert_eq!(body.len(), 1_500_000);
    assert_eq!(sha256(&body), expected);
    // Several connections at once, each whole.
    let fetches: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || get(port, "/blob")))
        .collect();
    for fetch in fetches {
        let body = fetch.join().expect("fetch").expect("a 200 reply");
        assert_eq!(sha256(&body), expected);
    }
    // A port the container does not serve closes the connection instead of hanging.
    let mut s = TcpStream::connect(("127.0.0.1", unserved)).expect("the host listens");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("closed, not timed out");
    assert!(reply.is_empty());
    drop(run);
    wait_for_nothing_left(before);
}

#[test]
fn two_sandboxes_publish_different_ports_and_each_answers_its_own() {
    let _serial = serial();
    let before = leftovers();
    let ports = [free_port(), free_port()];
    let mut ids = Removed(Vec::new());
    for port in ports {
        let publish = format!("{port}:80/tcp");
        let script = format!(
            "mkdir /www && echo served on {port} > /www/index.html && exec httpd -f -p 80 -h /www"
        );
        let id = ok(&["run", "-d", "-p", &publish, "busybox", "sh", "-c", &script]);
        ids.0.push(id.trim().to_string());
    }
    for port in ports {
        assert_eq!(
            text(&get_when_up(port, "/index.html")),
            format!("served on {port}\n")
        );
    }
    let ps = ok(&["ps"]);
    for (id, port) in ids.0.iter().zip(ports) {
        assert!(
            ps.lines()
                .any(|l| l.starts_with(id.as_str())
                    && l.ends_with(&format!("0.0.0.0:{port}->80/tcp"))),
            "{ps}"
        );
    }
    for id in &ids.0 {
        ok(&["rm", "-f", id]);
    }
    wait_for_nothing_left(before);
}

#[test]
fn a_busy_port_is_refused_with_125_naming_it_and_leaves_nothing() {
    let _serial = serial();
    let before = leftovers();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let publish = format!("127.0.0.1:{port}:80");
    for detach in [false, true] {
        let mut args = vec!["run", "--rm", "-p", "127.0.0.1::81", "-p", &publish];
        if detach {
            args.insert(1, "-d");
        }
        args.extend(["busybox", "true"]);
        let started = Instant::now();
        let out = vmpod(&args, None);
        assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(&format!("127.0.0.1:{port}"))
                && text(&out.stderr).contains("in use"),
            "{}",
            text(&out.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no VM was started"
        );
        assert_eq!(leftovers(), before, "{:?} {:?}", state_dirs(), records());
    }
    for (spec, says) in [
        ("53:53/udp", "-p 53:53/udp: only tcp"),
        ("8080:http", "-p 8080:http: container port 'http'"),
    ] {
        let out = vmpod(&["run", "--rm", "-p", spec, "busybox", "true"], None);
        assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    assert_eq!(leftovers(), before);
}
