//! `-p [HOSTIP:]HOSTPORT:CTRPORT[/tcp]`, docker's publish, over vsock: the host listens, and
//! each connection it accepts is copied both ways through its own connection to the agent's
//! forward port, which joins it to the container's port inside the VM. No tap, no NAT, the
//! same on both backends. Listeners are bound before the VM starts, so a busy port fails the
//! run with nothing to undo.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use vmpod_sandbox::Endpoint;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("-p {spec}: {why}; expected [HOSTIP:]HOSTPORT:CTRPORT[/tcp]")]
    BadSpec { spec: String, why: String },
    #[error("-p {spec}: only tcp can be published (udp, sctp: not supported)")]
    NotTcp { spec: String },
    #[error("cannot publish {address}: {why}")]
    Bind { address: SocketAddr, why: String },
}

/// One `-p`, parsed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortSpec {
    pub host_ip: IpAddr,
    /// 0: the system picks one (docker's `-p CTRPORT`).
    pub host_port: u16,
    pub container_port: u16,
}

impl fmt::Display for PortSpec {
    /// As docker's `ps` shows it: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = SocketAddr::new(self.host_ip, self.host_port);
        write!(f, "{host}->{}/tcp", self.container_port)
    }
}

fn port(spec: &str, text: &str, what: &str) -> Result<u16, PublishError> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(PublishError::BadSpec {
            spec: spec.into(),
            why: format!("{what} '{text}' is not a port (1-65535)"),
        }),
    }
}

/// docker's forms: `CTRPORT`, `HOSTPORT:CTRPORT`, `HOSTIP:HOSTPORT:CTRPORT`,
/// `HOSTIP::CTRPORT` and `[IPv6]:HOSTPORT:CTRPORT`, each with an optional `/tcp`.
pub fn parse(spec: &str) -> Result<PortSpec, PublishError> {
    let bad = |why: &str| PublishError::BadSpec {
        spec: spec.into(),
        why: why.into(),
    };
    let ports = match spec.rsplit_once('/') {
        Some((ports, "tcp")) => ports,
        Some((_, "udp" | "sctp")) => return Err(PublishError::NotTcp { spec: spec.into() }),
        Some((_, other)) => return Err(bad(&format!("unknown protocol '{other}'"))),
        None => spec,
    };
    if ports.contains('-') {
        return Err(bad("port ranges are not supported"));
    }
    let mut parts = ports.rsplitn(3, ':');
    let container = parts.next().unwrap_or_default();
    let host_port = parts.next();
    let host_ip = parts.next();
    let container_port = port(spec, container, "container port")?;
    let host_port = match host_port {
        None | Some("") => 0,
        Some(text) => port(spec, text, "host port")?,
    };
    let host_ip = match host_ip {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(text) => {
            let text = text
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .unwrap_or(text);
            text.parse()
                .map_err(|_| bad(&format!("'{text}' is not an IP address")))?
        }
    };
    Ok(PortSpec {
        host_ip,
        host_port,
        container_port,
    })
}

/// A host port bound for the container: what `ps` shows (with the port the system picked, if
/// it picked one) and the socket that accepts.
pub struct Published {
    pub spec: PortSpec,
    listener: TcpListener,
}

/// Binds every port, or none: the first that cannot be bound is named.
pub fn bind(specs: &[PortSpec]) -> Result<Vec<Published>, PublishError> {
    specs
        .iter()
        .map(|spec| {
            let address = SocketAddr::new(spec.host_ip, spec.host_port);
            let listener = TcpListener::bind(address).map_err(|e| PublishError::Bind {
                address,
                why: if e.kind() == std::io::ErrorKind::AddrInUse {
                    "the port is already in use".into()
                } else {
                    e.to_string()
                },
            })?;
            let host_port = listener
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(spec.host_port);
            Ok(Published {
                spec: PortSpec { host_port, ..*spec },
                listener,
            })
        })
        .collect()
}

/// Accepts on every port, on threads that live as long as the process (the run or the
/// monitor, which ends with the container).
pub fn serve(published: Vec<Published>, endpoint: &Endpoint) {
    for p in published {
        let endpoint = endpoint.clone();
        std::thread::spawn(move || {
            for client in p.listener.incoming().flatten() {
                let endpoint = endpoint.clone();
                let port = p.spec.container_port;
                std::thread::spawn(move || forward(client, &endpoint, port));
            }
        });
    }
}

/// One connection: copied both ways, each direction's end passed on as a half-close. A port
/// nobody listens on in the container closes the client's connection.
fn forward(client: TcpStream, endpoint: &Endpoint, port: u16) {
    let Ok(guest) = endpoint.forward(port) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let (Ok(client_in), Ok(guest_out)) = (client.try_clone(), guest.try_clone()) else {
        return;
    };
    let inbound = std::thread::spawn(move || {
        crate::session::copy(client_in, &guest_out);
        let _ = guest_out.shutdown(Shutdown::Write);
    });
    crate::session::copy(&guest, &client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = inbound.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ip: &str, host: u16, ctr: u16) -> PortSpec {
        PortSpec {
            host_ip: ip.parse().unwrap(),
            host_port: host,
            container_port: ctr,
        }
    }

    #[test]
    fn docker_forms_parse() {
        assert_eq!(parse("8080:80"), Ok(spec("0.0.0.0", 8080, 80)));
        assert_eq!(parse("8080:80/tcp"), Ok(spec("0.0.0.0", 8080, 80)));
        assert_eq!(parse("127.0.0.1:8080:80"), Ok(spec("127.0.0.1", 8080, 80)));
        assert_eq!(parse("127.0.0.1::80"), Ok(spec("127.0.0.1", 0, 80)));
        assert_eq!(parse("80"), Ok(spec("0.0.0.0", 0, 80)));
        assert_eq!(parse("[::1]:8080:80"), Ok(spec("::1", 8080, 80)));
    }

    #[test]
    fn udp_is_refused_by_name() {
        let e = parse("53:53/udp").unwrap_err();
        assert_eq!(
            e,
            PublishError::NotTcp {
                spec: "53:53/udp".into()
            }
        );
        assert!(e.to_string().contains("udp"), "{e}");
    }

    #[test]
    fn bad_specs_name_the_flag_and_what_is_wrong() {
        for (bad, says) in [
            ("8080:http", "container port 'http'"),
            ("0:80", "host port '0'"),
            ("99999:80", "host port '99999'"),
            ("localhost:8080:80", "'localhost' is not an IP address"),
            ("8080-8081:80-81", "ranges"),
            ("8080:80/quic", "unknown protocol 'quic'"),
            ("", "container port ''"),
        ] {
            let text = parse(bad).unwrap_err().to_string();
            assert!(text.starts_with(&format!("-p {bad}: ")), "{text}");
            assert!(text.contains(says), "{bad}: {text}");
        }
    }

    #[test]
    fn ps_shows_ports_as_docker_does() {
        assert_eq!(
            spec("0.0.0.0", 8080, 80).to_string(),
            "0.0.0.0:8080->80/tcp"
        );
        assert_eq!(spec("::1", 8080, 80).to_string(), "[::1]:8080->80/tcp");
    }

    #[test]
    fn a_busy_port_is_refused_naming_the_address_and_binds_nothing() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let free = spec("127.0.0.1", 0, 81);
        let e = match bind(&[free, spec("127.0.0.1", busy, 80)]) {
            Err(e) => e,
            Ok(_) => panic!("a busy port was bound"),
        };
        assert_eq!(
            e.to_string(),
            format!("cannot publish 127.0.0.1:{busy}: the port is already in use")
        );
    }

    #[test]
    fn a_system_picked_port_is_shown_as_bound() {
        let bound = bind(&[spec("127.0.0.1", 0, 80)]).unwrap();
        assert_ne!(bound[0].spec.host_port, 0);
    }
}
