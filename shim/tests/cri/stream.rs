//! A streaming exec as kubectl makes one: a websocket to the URL the CRI's Exec returned,
//! speaking Kubernetes' `v4.channel.k8s.io` (each binary message starts with its channel: 0
//! stdin, 1 stdout, 2 stderr, 3 the final status, 4 terminal resizes). containerd's streaming
//! server listens on the node's loopback, so the connection is made from a thread that
//! entered the node's network namespace.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::Path;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// What came back: stdout (a terminal's output) and the final status (JSON).
#[derive(Debug, Default)]
pub struct Session {
    pub stdout: String,
    pub stderr: String,
    pub status: String,
}

/// Resizes the terminal to `rows`×`cols`, writes `input` and reads to the end.
pub fn run(netns: &Path, url: &str, rows: u16, cols: u16, input: &str) -> Session {
    let (netns, url, input) = (netns.to_path_buf(), url.to_string(), input.to_string());
    std::thread::spawn(move || {
        enter_netns(&netns);
        talk(&url, rows, cols, &input)
    })
    .join()
    .expect("the streaming thread panicked")
}

fn enter_netns(netns: &Path) {
    let ns = std::fs::File::open(netns).expect("open the node's netns");
    // SAFETY: setns on an open namespace fd; it affects only this thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn talk(url: &str, rows: u16, cols: u16, input: &str) -> Session {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .expect("a websocket URL");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("a header value"),
    );
    let authority = request.uri().authority().expect("host:port").to_string();
    let tcp = TcpStream::connect(&authority).expect("connect to the streaming server");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("a read timeout");
    let (mut ws, _) = tungstenite::client(request, tcp).expect("websocket handshake");
    let send = |ws: &mut tungstenite::WebSocket<TcpStream>, channel: u8, bytes: &[u8]| {
        let mut frame = vec![channel];
        frame.extend_from_slice(bytes);
        ws.send(Message::binary(frame)).expect("send a frame");
    };
    let resize = format!(r#"{{"Width":{cols},"Height":{rows}}}"#);
    send(&mut ws, RESIZE, resize.as_bytes());
    send(&mut ws, STDIN, input.as_bytes());
    let mut session = Session::default();
    loop {
        let message = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read from the streaming server: {e}"),
        };
        let bytes = match message {
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&channel, rest)) = bytes.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(rest);
        match channel {
            STDOUT => session.stdout += &text,
            STDERR => session.stderr += &text,
            STATUS => session.status += &text,
            _ => {}
        }
    }
    session
}
