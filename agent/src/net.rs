//! The guest's network, set up as the host asks: IPv4 addresses, routes, DNS. Plain ioctls,
//! so the initramfs needs no tools.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use vmpod_protocol::NetworkConfig;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no interface has MAC address {0}")]
    NoSuchMac(String),
    #[error("'{0}' is not an IPv4 address in CIDR form (like 10.0.0.2/24)")]
    BadCidr(String),
    #[error("'{0}' is not an IPv4 address")]
    BadAddress(String),
    #[error("'{0}' is not a MAC address (like 02:00:0a:00:00:02)")]
    BadMac(String),
    #[error("{what} on {interface}")]
    Ioctl {
        what: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("write /etc/resolv.conf")]
    Resolv(#[source] io::Error),
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned on success.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(sock: &OwnedFd, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here reads or writes one ifreq, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; sockaddr is its generic view.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

pub fn loopback_up() -> io::Result<()> {
    set_up(&socket()?, "lo")
}

fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let bad = || NetError::BadCidr(cidr.to_string());
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((addr, len))
}

fn netmask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0))
}

fn interface_by_mac(mac: &str) -> Result<String, NetError> {
    let entries =
        std::fs::read_dir("/sys/class/net").map_err(|_| NetError::NoSuchMac(mac.into()))?;
    for entry in entries.flatten() {
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim().eq_ignore_ascii_case(mac) {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Err(NetError::NoSuchMac(mac.to_string()))
}

/// The VM's only NIC (an interface with a device behind it), given `mac`: a VM restored from a
/// template has the template's address on it. `None` when there is not exactly one NIC.
fn adopt_only_nic(sock: &OwnedFd, mac: &str) -> Result<Option<String>, NetError> {
    let nics: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("device").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let [name] = nics.as_slice() else {
        return Ok(None);
    };
    let bytes = parse_mac(mac).ok_or_else(|| NetError::BadMac(mac.to_string()))?;
    let fail = |source| NetError::Ioctl {
        what: "set the MAC address",
        interface: name.clone(),
        source,
    };
    let mut req = ifreq(name).map_err(fail)?;
    // SAFETY: sockaddr is plain data; all-zero is a valid value.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = hw;
    ioctl(sock, libc::SIOCSIFHWADDR, &mut req).map_err(fail)?;
    Ok(Some(name.clone()))
}

fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in out.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Checks the whole request before touching anything, so a bad one changes nothing.
pub fn validate(config: &NetworkConfig) -> Result<(), NetError> {
    for interface in &config.interfaces {
        parse_mac(&interface.mac).ok_or_else(|| NetError::BadMac(interface.mac.clone()))?;
        for cidr in &interface.addresses {
            parse_cidr(cidr)?;
        }
    }
    for route in &config.routes {
        if route.destination != "default" {
            parse_cidr(&route.destination)?;
        }
        if let Some(gw) = &route.gateway {
            gw.parse::<Ipv4Addr>()
                .map_err(|_| NetError::BadAddress(gw.clone()))?;
        }
    }
    for ns in &config.dns.nameservers {
        ns.parse::<std::net::IpAddr>()
            .map_err(|_| NetError::BadAddress(ns.clone()))?;
    }
    Ok(())
}

pub fn setup(config: &NetworkConfig) -> Result<(), NetError> {
    validate(config)?;
    let sock = socket().map_err(|source| NetError::Ioctl {
        what: "open a socket",
        interface: String::new(),
        source,
    })?;
    for interface in &config.interfaces {
        let name = match interface_by_mac(&interface.mac) {
            Ok(name) => name,
            // A clone of a template whose NIC still has the template's address.
            Err(e) if config.interfaces.len() == 1 => {
                adopt_only_nic(&sock, &interface.mac)?.ok_or(e)?
            }
            Err(e) => return Err(e),
        };
        let fail = |what: &'static str| {
            let name = name.clone();
            move |source| NetError::Ioctl {
                what,
                interface: name,
                source,
            }
        };
        if let Some(mtu) = interface.mtu {
            let mut req = ifreq(&name).map_err(fail("name"))?;
            req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
            ioctl(&sock, libc::SIOCSIFMTU, &mut req).map_err(fail("set the MTU"))?;
        }
        // The ioctl interface holds one IPv4 address per interface: the first one counts.
        if let Some(cidr) = interface.addresses.first() {
            let (addr, len) = parse_cidr(cidr)?;
            let mut req = ifreq(&name).map_err(fail("name"))?;
            req.ifr_ifru.ifru_addr = sockaddr_in(addr);
            ioctl(&sock, libc::SIOCSIFADDR, &mut req).map_err(fail("set the address"))?;
            req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(len));
            ioctl(&sock, libc::SIOCSIFNETMASK, &mut req).map_err(fail("set the netmask"))?;
        }
        set_up(&sock, &name).map_err(fail("bring up"))?;
    }
    for route in &config.routes {
        add_route(&sock, route)?;
    }
    write_resolv_conf(&config.dns).map_err(NetError::Resolv)
}

fn add_route(sock: &OwnedFd, route: &vmpod_protocol::Route) -> Result<(), NetError> {
    let (dest, len) = if route.destination == "default" {
        (Ipv4Addr::UNSPECIFIED, 0)
    } else {
        parse_cidr(&route.destination)?
    };
    // SAFETY: rtentry is plain data; all-zero is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(dest);
    rt.rt_genmask = sockaddr_in(netmask(len));
    rt.rt_flags = libc::RTF_UP;
    if let Some(gw) = &route.gateway {
        let gw: Ipv4Addr = gw.parse().map_err(|_| NetError::BadAddress(gw.clone()))?;
        rt.rt_gateway = sockaddr_in(gw);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    // SAFETY: SIOCADDRT reads one rtentry, which `rt` is.
    if unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT,
            &mut rt as *mut libc::rtentry,
        )
    } < 0
    {
        return Err(NetError::Ioctl {
            what: "add the route",
            interface: route.destination.clone(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn write_resolv_conf(dns: &vmpod_protocol::Dns) -> io::Result<()> {
    if dns.nameservers.is_empty() && dns.search.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for ns in &dns.nameservers {
        text += &format!("nameserver {ns}\n");
    }
    if !dns.search.is_empty() {
        text += &format!("search {}\n", dns.search.join(" "));
    }
    if !dns.options.is_empty() {
        text += &format!("options {}\n", dns.options.join(" "));
    }
    std::fs::write("/etc/resolv.conf", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:76:6d:70:00:0A"),
            Some([0x02, 0x76, 0x6d, 0x70, 0x00, 0x0a])
        );
        for bad in [
            "",
            "02:76:6d:70:00",
            "02:76:6d:70:00:01:02",
            "zz:76:6d:70:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn cidrs_and_masks() {
        assert_eq!(
            parse_cidr("10.0.0.2/24").unwrap(),
            ("10.0.0.2".parse().unwrap(), 24)
        );
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        for bad in ["10.0.0.2", "10.0.0.2/33", "x/24", "10.0.0/8"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_request_is_refused_whole() {
        let config = NetworkConfig {
            routes: vec![vmpod_protocol::Route {
                destination: "default".into(),
                gateway: Some("nonsense".into()),
            }],
            ..Default::default()
        };
        assert_eq!(
            validate(&config).unwrap_err().to_string(),
            "'nonsense' is not an IPv4 address"
        );
        let config = NetworkConfig {
            interfaces: vec![vmpod_protocol::Interface {
                mac: "02:00".into(),
                addresses: vec![],
                mtu: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            validate(&config).unwrap_err().to_string(),
            "'02:00' is not a MAC address (like 02:00:0a:00:00:02)"
        );
    }
}
