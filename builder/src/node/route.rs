// SPDX-License-Identifier: Apache-2.0
//! The node address, and a default route when the node has none.
//!
//! kubeadm and kubelet choose the node address from the interface the
//! default route leaves by (k8s.io/apimachinery `ChooseHostInterface`), and
//! host processes need some route to reach Service IPs before kube-proxy's
//! DNAT rewrites them. An air-gapped node often has no default route, so —
//! as the seed article did — airlock adds one through a dummy interface,
//! `airlock0`, that carries the node address as a /32 (/128):
//!
//! ```text
//! ip link add airlock0 type dummy
//! ip link set airlock0 up
//! ip addr add <node address>/32 dev airlock0
//! ip route add default dev airlock0 src <node address> metric 1000000
//! ```
//!
//! Packets to unknown destinations go into the dummy and are dropped — they
//! never reach the site's network — while the address kubeadm and kubelet
//! find on the default-route interface is the node's own. The high metric
//! lets a default route that appears later (DHCP) win. An existing default
//! route is never touched, and nothing is done twice. The route does not
//! survive a reboot, so the step runs at every boot (`airlock node route`).
//!
//! The decision is a pure function over `ip -j` output, tested below.

use std::net::IpAddr;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{paths, say, NodeRoot};
use crate::cmd::CommandRunExt;
use crate::kube::settings::NodeSection;

/// The dummy interface airlock adds.
pub const DUMMY: &str = "airlock0";
/// Metric of the added route: any other default route wins.
pub const METRIC: &str = "1000000";

/// One entry of `ip -j route show default`.
#[derive(Debug, Clone, Deserialize)]
pub struct IpRoute {
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
}

/// One entry of `ip -j addr show`.
#[derive(Debug, Clone, Deserialize)]
pub struct IpLink {
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub addr_info: Vec<IpAddrInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IpAddrInfo {
    pub family: String,
    pub local: IpAddr,
    #[serde(default)]
    pub scope: String,
}

/// What `ip` reports: default routes by family and the interfaces.
#[derive(Debug, Clone, Default)]
pub struct NetState {
    pub default_v4: Vec<IpRoute>,
    pub default_v6: Vec<IpRoute>,
    pub links: Vec<IpLink>,
}

/// What to do: the node address (if one is known) and the `ip` commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub address: Option<IpAddr>,
    /// Arguments of each `ip` command to run, in order; empty: nothing to do.
    pub commands: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<Vec<T>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).with_context(|| format!("parsing the output of {what}"))
}

impl NetState {
    pub fn parse(default_v4: &str, default_v6: &str, addrs: &str) -> Result<NetState> {
        Ok(NetState {
            default_v4: parse_json("ip -j -4 route show default", default_v4)?,
            default_v6: parse_json("ip -j -6 route show default", default_v6)?,
            links: parse_json("ip -j addr show", addrs)?,
        })
    }

    /// Asks `ip` on the running system.
    pub fn read() -> Result<NetState> {
        let ip = |args: &[&str]| Command::new("ip").args(args).run_get_string();
        NetState::parse(
            &ip(&["-j", "-4", "route", "show", "default"])
                .context("listing IPv4 default routes")?,
            &ip(&["-j", "-6", "route", "show", "default"])
                .context("listing IPv6 default routes")?,
            &ip(&["-j", "addr", "show"]).context("listing network interfaces")?,
        )
    }

    fn link(&self, name: &str) -> Option<&IpLink> {
        self.links.iter().find(|l| l.ifname == name)
    }
}

fn global(l: &IpLink) -> impl Iterator<Item = IpAddr> + '_ {
    let mut a: Vec<IpAddr> = l
        .addr_info
        .iter()
        .filter(|a| a.scope == "global" && (a.family == "inet" || a.family == "inet6"))
        .map(|a| a.local)
        .collect();
    // IPv4 first, as kubeadm prefers it.
    a.sort_by_key(|a| a.is_ipv6());
    a.into_iter()
}

/// The node address from node.toml: the address, else the first global
/// address of the interface, else none (kubeadm would pick one).
pub fn node_address(node: &NodeSection, net: &NetState) -> Result<Option<IpAddr>> {
    if let Some(a) = node.advertise_address {
        return Ok(Some(a));
    }
    let Some(name) = &node.advertise_interface else {
        return Ok(None);
    };
    let Some(link) = net.link(name) else {
        let names: Vec<&str> = net.links.iter().map(|l| l.ifname.as_str()).collect();
        bail!(
            "node.advertise_interface {name:?} is not an interface of this machine (it has {}); \
             fix {} on the ESP",
            names.join(", "),
            paths::NODE_TOML
        );
    };
    match global(link).next() {
        Some(a) => Ok(Some(a)),
        None => bail!(
            "interface {name} (node.advertise_interface) has no global address yet: is the network \
             configured? set node.advertise_address in {} to use a fixed address",
            paths::NODE_TOML
        ),
    }
}

/// Decides whether and how to add the default route (pure).
pub fn decide(node: &NodeSection, net: &NetState) -> Result<Decision> {
    let mut notes = Vec::new();
    let mut address = node_address(node, net)?;
    let v6 = address.is_some_and(|a| a.is_ipv6());
    let existing = if v6 { &net.default_v6 } else { &net.default_v4 };
    if let Some(r) = existing.first() {
        let via = r
            .gateway
            .as_deref()
            .map(|g| format!("via {g} "))
            .unwrap_or_default();
        notes.push(format!(
            "default route present ({via}dev {}): leaving the routes alone",
            r.dev.as_deref().unwrap_or("?")
        ));
        return Ok(Decision {
            address,
            commands: Vec::new(),
            notes,
        });
    }
    let usable = |l: &&IpLink| {
        l.ifname != DUMMY
            && !l.flags.iter().any(|f| f == "LOOPBACK")
            && l.flags.iter().any(|f| f == "UP")
    };
    let addr = match address {
        Some(a) => a,
        None => {
            let Some(a) = net.links.iter().filter(usable).flat_map(global).next() else {
                bail!(
                    "the node has no default route and no network address, so kubeadm cannot choose \
                     a node address: configure the network, or set node.advertise_address in {}",
                    paths::NODE_TOML
                );
            };
            notes.push(format!(
                "no advertise address in node.toml: using {a}, the first global address"
            ));
            address = Some(a);
            a
        }
    };
    let on_real = net
        .links
        .iter()
        .filter(usable)
        .flat_map(global)
        .any(|a| a == addr);
    if !on_real {
        notes.push(format!(
            "warning: {addr} is on no network interface of this machine, only on {DUMMY}: other nodes \
             will not reach this one until the network carries it"
        ));
    }
    let (fam, len) = if addr.is_ipv6() {
        ("-6", 128)
    } else {
        ("-4", 32)
    };
    let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let mut commands = Vec::new();
    let dummy = net.link(DUMMY);
    if dummy.is_none() {
        commands.push(words(&format!("link add {DUMMY} type dummy")));
    }
    if !dummy.is_some_and(|l| l.flags.iter().any(|f| f == "UP")) {
        commands.push(words(&format!("link set {DUMMY} up")));
    }
    if !dummy.is_some_and(|l| l.addr_info.iter().any(|a| a.local == addr)) {
        commands.push(words(&format!("{fam} addr add {addr}/{len} dev {DUMMY}")));
    }
    commands.push(words(&format!(
        "{fam} route add default dev {DUMMY} src {addr} metric {METRIC}"
    )));
    notes.push(format!(
        "no default route: adding one through the dummy interface {DUMMY} ({addr})"
    ));
    Ok(Decision {
        address,
        commands,
        notes,
    })
}

/// Resolves the node address and adds the default route if there is none.
/// On a root other than `/` the network is left alone.
pub fn ensure(root: &NodeRoot, node: &NodeSection) -> Result<Option<IpAddr>> {
    if !root.is_live() {
        say("not the running system (--root): leaving the network alone");
        return node_address(node, &NetState::default());
    }
    let d = decide(node, &NetState::read()?)?;
    for n in &d.notes {
        say(n);
    }
    for args in &d.commands {
        say(format!("ip {}", args.join(" ")));
        Command::new("ip")
            .args(args)
            .run()
            .with_context(|| format!("adding the default route through {DUMMY}"))?;
    }
    Ok(d.address)
}

/// `airlock node route`.
pub fn run(root: &NodeRoot) -> Result<Option<IpAddr>> {
    let n = super::settings::load_node(&root.path(paths::NODE_TOML))?;
    ensure(root, &n.node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::spec::Role;

    fn node(address: Option<&str>, interface: Option<&str>) -> NodeSection {
        NodeSection {
            name: None,
            hostname: "cp-1".into(),
            role: Role::Init,
            advertise_address: address.map(|a| a.parse().unwrap()),
            advertise_interface: interface.map(String::from),
            control_plane_endpoint: "10.0.0.10:6443".into(),
        }
    }

    const LO: &str = r#"{"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]}"#;
    const ETH0: &str = r#"{"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[{"family":"inet6","local":"fd00::2","prefixlen":64,"scope":"global"},{"family":"inet","local":"10.0.0.10","prefixlen":24,"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}"#;
    const ETH0_BARE: &str = r#"{"ifname":"eth0","flags":["BROADCAST","MULTICAST"],"addr_info":[]}"#;
    const DUMMY_UP: &str = r#"{"ifname":"airlock0","flags":["BROADCAST","NOARP","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"10.0.0.10","prefixlen":32,"scope":"global"}]}"#;
    const GW: &str = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]}]"#;

    fn net(v4: &str, v6: &str, links: &[&str]) -> NetState {
        NetState::parse(v4, v6, &format!("[{}]", links.join(","))).unwrap()
    }

    fn cmds(d: &Decision) -> Vec<String> {
        d.commands.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn an_existing_default_route_is_never_touched() {
        let d = decide(&node(None, None), &net(GW, "", &[LO, ETH0])).unwrap();
        assert!(d.commands.is_empty());
        assert_eq!(d.address, None, "kubeadm picks the address itself");
        assert!(
            d.notes[0].contains("via 192.0.2.1 dev eth0"),
            "{:?}",
            d.notes
        );
        // An IPv6 node looks at IPv6 default routes only.
        let d = decide(&node(Some("fd00::2"), None), &net(GW, "[]", &[LO, ETH0])).unwrap();
        assert_eq!(
            cmds(&d).last().unwrap(),
            "-6 route add default dev airlock0 src fd00::2 metric 1000000"
        );
    }

    /// One case: name, advertise address, advertise interface, links, the
    /// address expected, whether a warning is expected.
    struct Case(
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static [&'static str],
        &'static str,
        bool,
    );

    #[test]
    fn no_default_route_adds_one_through_the_dummy() {
        let cases = [
            Case(
                "address given",
                Some("10.0.0.10"),
                None,
                &[LO, ETH0],
                "10.0.0.10",
                false,
            ),
            Case(
                "from interface",
                None,
                Some("eth0"),
                &[LO, ETH0],
                "10.0.0.10",
                false,
            ),
            Case(
                "first global address",
                None,
                None,
                &[LO, ETH0],
                "10.0.0.10",
                false,
            ),
            Case(
                "address on no interface",
                Some("10.0.2.15"),
                None,
                &[LO, ETH0_BARE],
                "10.0.2.15",
                true,
            ),
        ];
        for Case(name, addr, iface, links, want, warned) in cases {
            let d = decide(&node(addr, iface), &net("[]", "", links)).unwrap();
            assert_eq!(d.address, Some(want.parse().unwrap()), "{name}");
            assert_eq!(
                cmds(&d),
                [
                    "link add airlock0 type dummy".to_string(),
                    "link set airlock0 up".into(),
                    format!("-4 addr add {want}/32 dev airlock0"),
                    format!("-4 route add default dev airlock0 src {want} metric 1000000"),
                ],
                "{name}"
            );
            let warning = d.notes.iter().any(|n| n.starts_with("warning:"));
            assert_eq!(warning, warned, "{name}: {:?}", d.notes);
        }
    }

    #[test]
    fn a_second_run_in_the_same_boot_only_adds_the_missing_route() {
        let d = decide(
            &node(Some("10.0.0.10"), None),
            &net("", "", &[LO, ETH0, DUMMY_UP]),
        )
        .unwrap();
        assert_eq!(
            cmds(&d),
            ["-4 route add default dev airlock0 src 10.0.0.10 metric 1000000"]
        );
    }

    #[test]
    fn impossible_cases_say_what_to_fix() {
        let err = decide(&node(None, None), &net("[]", "[]", &[LO, ETH0_BARE]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no network address") && err.contains("advertise_address"),
            "{err}"
        );
        let err = decide(&node(None, Some("eth9")), &net(GW, "", &[LO, ETH0]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"eth9\" is not an interface") && err.contains("lo, eth0"),
            "{err}"
        );
        let err = decide(&node(None, Some("eth0")), &net("[]", "", &[LO, ETH0_BARE]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eth0 (node.advertise_interface) has no global address"),
            "{err}"
        );
    }
}
