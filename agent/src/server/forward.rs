//! Published ports: a host connection to the forward port, opened with a `ForwardHello`, is
//! joined to a TCP connection to that port on the VM's loopback (the container shares the
//! VM's network namespace), by two relays, one per direction, over dups of the two sockets.

use super::*;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// A server on the VM's loopback accepts at once; one whose backlog is full must not hold the
/// agent's only thread for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Server {
    /// Joins `host` to the VM's TCP port; if nothing listens there, dropping `host` closes it
    /// and the host closes its client's connection in turn.
    pub(super) fn open_forward(&mut self, hello: ForwardHello, host: OwnedFd) {
        let port = hello.port;
        if let Err(e) = self.join_forward(port, host) {
            crate::debug!("published port {port}: {e}");
        }
    }

    fn join_forward(&mut self, port: u16, host: OwnedFd) -> io::Result<()> {
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let tcp = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
        // Requests are small; waiting for more bytes to fill a segment only adds latency.
        tcp.set_nodelay(true)?;
        let tcp = OwnedFd::from(tcp);
        let (host_again, tcp_again) = (host.try_clone()?, tcp.try_clone()?);
        let inbound = self.add_relay(None, Relay::new(Some(host), Some(tcp)))?;
        let outbound = match self.add_relay(None, Relay::new(Some(tcp_again), Some(host_again))) {
            Ok(id) => id,
            Err(e) => {
                self.drop_relay(inbound);
                return Err(e);
            }
        };
        self.sync_relay(inbound);
        self.sync_relay(outbound);
        Ok(())
    }

    /// Forgets a relay that was never watched: its fds close with it.
    fn drop_relay(&mut self, id: u64) {
        if let Some(e) = self.relays.remove(&id) {
            self.tokens.remove(&e.src_token);
            self.tokens.remove(&e.dst_token);
        }
    }
}
