//! A pod's network namespace wired to its VM, as Kata's tc mirroring does it: a tap in the
//! namespace, and tc redirecting every frame from the pod's interface (the CNI's veth) to the
//! tap and back. The guest's NIC takes the interface's MAC and its addresses and routes, so
//! the guest owns the pod's IP while the namespace stays as the CNI plugin made it.

use crate::error::{io, SandboxError};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmpod_devices::net::Tap;
use vmpod_protocol::{Interface, NetworkConfig, Route};

/// The tap's name inside the pod's namespace.
pub const TAP: &str = "vmpodtap0";

/// The namespace's interface the guest takes over, as `ip -j` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInterface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    pub addresses: Vec<String>,
}

pub struct PodNetwork {
    pub netns: PathBuf,
    pub interface: PodInterface,
    pub config: NetworkConfig,
}

fn invalid(netns: &Path, why: impl std::fmt::Display) -> SandboxError {
    SandboxError::Invalid(format!("--netns {}: {why}", netns.display()))
}

/// Runs `args` inside the namespace; its stdout.
fn in_netns(netns: &Path, args: &[&str]) -> Result<String, SandboxError> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .map_err(io("run nsenter (apt-get install util-linux)"))?;
    if !out.status.success() {
        return Err(invalid(
            netns,
            format!(
                "`{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first Ethernet interface with an IPv4 address (lo and our own tap aside).
pub fn pick_interface(addr_json: &str) -> Result<Option<PodInterface>, String> {
    let links: Vec<serde_json::Value> =
        serde_json::from_str(addr_json).map_err(|e| format!("`ip -j addr` said: {e}"))?;
    for link in links {
        let name = link["ifname"].as_str().unwrap_or_default();
        if link["link_type"] != "ether" || name == TAP {
            continue;
        }
        let addresses: Vec<String> = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"] == "inet")
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect();
        if addresses.is_empty() {
            continue;
        }
        return Ok(Some(PodInterface {
            name: name.to_string(),
            mac: link["address"].as_str().unwrap_or_default().to_string(),
            mtu: link["mtu"].as_u64().map(|m| m as u32),
            addresses,
        }));
    }
    Ok(None)
}

/// The interface's IPv4 routes in the agent's terms (the kernel's own link routes are made
/// again by the guest when it adds the addresses).
pub fn routes(route_json: &str) -> Result<Vec<Route>, String> {
    let routes: Vec<serde_json::Value> =
        serde_json::from_str(route_json).map_err(|e| format!("`ip -j route` said: {e}"))?;
    Ok(routes
        .iter()
        .filter(|r| r["protocol"] != "kernel")
        .filter_map(|r| {
            Some(Route {
                destination: r["dst"].as_str()?.to_string(),
                gateway: r["gateway"].as_str().map(str::to_string),
            })
        })
        .collect())
}

impl PodNetwork {
    /// Finds the pod's interface, creates the tap and the mirroring; returns the tap's fd for
    /// the VMM. On error nothing is left in the namespace.
    pub fn attach(netns: &Path) -> Result<(PodNetwork, OwnedFd), SandboxError> {
        if !netns.exists() {
            return Err(invalid(netns, "no such network namespace"));
        }
        let interface = pick_interface(&in_netns(netns, &["ip", "-j", "addr", "show"])?)
            .map_err(|e| invalid(netns, e))?
            .ok_or_else(|| invalid(netns, "it has no Ethernet interface with an IPv4 address"))?;
        let routes = routes(&in_netns(
            netns,
            &["ip", "-j", "-4", "route", "show", "dev", &interface.name],
        )?)
        .map_err(|e| invalid(netns, e))?;
        let tap = Tap::open(TAP, Some(netns)).map_err(|e| {
            invalid(
                netns,
                format!("{e} (does another sandbox use this namespace?)"),
            )
        })?;
        let network = PodNetwork {
            netns: netns.to_path_buf(),
            config: NetworkConfig {
                interfaces: vec![Interface {
                    mac: interface.mac.clone(),
                    addresses: interface.addresses.clone(),
                    mtu: interface.mtu,
                }],
                routes,
                dns: Default::default(),
            },
            interface,
        };
        let dev = network.interface.name.clone();
        let mirror = |from: &str, to: &str| -> Result<(), SandboxError> {
            in_netns(netns, &["tc", "qdisc", "add", "dev", from, "ingress"])?;
            in_netns(
                netns,
                &[
                    "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
                    "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect",
                    "dev", to,
                ],
            )?;
            Ok(())
        };
        let wired = in_netns(netns, &["ip", "link", "set", TAP, "up"])
            .and_then(|_| mirror(&dev, TAP))
            .and_then(|()| mirror(TAP, &dev));
        if let Err(e) = wired {
            network.detach();
            return Err(e);
        }
        Ok((network, tap.into_fd()))
    }

    /// What undoes `attach` (the tap goes with its last fd): a shell command, so the sandbox's
    /// janitor can run it too when the owner is killed.
    pub fn detach_command(&self) -> String {
        format!(
            "nsenter --net='{}' tc qdisc del dev '{}' ingress 2>/dev/null",
            self.netns.display(),
            self.interface.name
        )
    }

    pub fn detach(&self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(self.detach_command())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_interface_is_the_first_ethernet_one_with_ipv4() {
        let json = r#"[
          {"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00","mtu":65536,
           "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
          {"ifname":"vmpodtap0","link_type":"ether","address":"aa:aa:aa:aa:aa:aa","mtu":1500,"addr_info":[]},
          {"ifname":"eth1","link_type":"ether","address":"bb:bb:bb:bb:bb:bb","mtu":1500,
           "addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64}]},
          {"ifname":"eth0","link_type":"ether","address":"0a:58:0a:f4:00:05","mtu":1450,
           "addr_info":[{"family":"inet","local":"10.244.0.5","prefixlen":24}]}
        ]"#;
        assert_eq!(
            pick_interface(json).unwrap(),
            Some(PodInterface {
                name: "eth0".into(),
                mac: "0a:58:0a:f4:00:05".into(),
                mtu: Some(1450),
                addresses: vec!["10.244.0.5/24".into()],
            })
        );
        assert_eq!(pick_interface("[]").unwrap(), None);
        assert!(pick_interface("not json").is_err());
    }

    #[test]
    fn kernel_link_routes_are_left_to_the_guest() {
        let json = r#"[{"dst":"default","gateway":"10.244.0.1","dev":"eth0","flags":[]},
                       {"dst":"10.244.0.0/24","dev":"eth0","protocol":"kernel","scope":"link"},
                       {"dst":"10.96.0.0/12","gateway":"10.244.0.1","dev":"eth0"}]"#;
        assert_eq!(
            routes(json).unwrap(),
            vec![
                Route {
                    destination: "default".into(),
                    gateway: Some("10.244.0.1".into())
                },
                Route {
                    destination: "10.96.0.0/12".into(),
                    gateway: Some("10.244.0.1".into())
                },
            ]
        );
    }
}
