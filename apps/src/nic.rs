//! `--nic user`: the machine's own network card, an NE2000 on the ISA
//! bus (QEMU's `ne2k_isa`, Bochs's `ne2k:`) behind the emulator's
//! user-mode network (slirp), restricted to the machine itself; the unprivileged nic-driver server (crate
//! `nic-driver`, over the `ne2k` driver) drives it with its 32 ports and
//! its IRQ line. The guest does not see this card.
//!
//! `--net user`: the same card and network as the guest's uplink. The
//! guest gets a virtio-net function (the virtio-net server, PC board),
//! whose link channel to the switch server carries its frames both ways;
//! the switch's uplink is its link channel to the nic-driver;
//! forward rules (`guestfwd`, `hostfwd`) may join the network to services
//! on the host's loopback, and nothing else.
use std::ffi::OsString;

/// The nic-driver server's task name.
pub const NIC_DRIVER: &str = "nic-driver";

/// What `--nic` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicSpec {
    /// QEMU's user-mode network (slirp), `restrict=on`: no route off the
    /// machine; its DHCP server offers 10.0.2.15.
    User,
}

impl NicSpec {
    /// Parses `--nic`'s value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "user" => Ok(NicSpec::User),
            _ => Err(format!(
                "`{s}` is not a network: the only one is `user` (QEMU's user-mode network, restricted to the machine)"
            )),
        }
    }
}

/// The virtio-net server's task name.
pub const VIRTIO_NET: &str = "virtio-net";

/// The switch server's task name.
pub const SWITCH: &str = "switch";

/// What `--net` takes: `user`, then forward rules, comma-separated; or
/// `switch` (several VMs: joined to each other, no uplink).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSpec {
    /// The switch has an uplink: the machine's NE2000 and QEMU's user
    /// network behind it (`user`); without (`switch`), the VMs only.
    pub uplink: bool,
    /// QEMU `-netdev user` forward rules, each `guestfwd=...` or
    /// `hostfwd=...`, their host side 127.0.0.1.
    pub forwards: Vec<String>,
}

/// The host address every forward rule must name: the machine reaches
/// only the host's loopback.
const LOOPBACK: &str = "127.0.0.1";

impl NetSpec {
    /// Parses `--net`'s value: `user[,guestfwd=tcp:ADDR:PORT-tcp:127.0.0.1:PORT]...[,hostfwd=tcp:127.0.0.1:PORT-:PORT]...`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "switch" {
            return Ok(Self::default());
        }
        let mut parts = s.split(',');
        if parts.next() != Some("user") {
            return Err(format!(
                "`{s}` is not a network: `user` (QEMU's user-mode network, restricted to the machine), optionally with `,guestfwd=...` or `,hostfwd=...` rules to {LOOPBACK}, or `switch` (several VMs joined to each other only)"
            ));
        }
        let mut forwards = Vec::new();
        for rule in parts {
            let ok = if let Some(r) = rule.strip_prefix("guestfwd=") {
                // [tcp]:SERVER:PORT-DEV, DEV a TCP connection to the loopback.
                r.split_once('-').is_some_and(|(guest, dev)| {
                    guest.split(':').count() == 3
                        && dev
                            .strip_prefix(&format!("tcp:{LOOPBACK}:"))
                            .is_some_and(|p| p.parse::<u16>().is_ok())
                })
            } else if let Some(r) = rule.strip_prefix("hostfwd=") {
                // [tcp|udp]:HOSTADDR:HOSTPORT-[GUESTADDR]:GUESTPORT.
                let host = r.split('-').next().unwrap_or("");
                let fields: Vec<&str> = host.split(':').collect();
                fields.len() == 3
                    && matches!(fields[0], "tcp" | "udp")
                    && fields[1] == LOOPBACK
                    && r.contains('-')
            } else {
                false
            };
            if !ok {
                return Err(format!(
                    "`{rule}` is not a forward rule this network takes: `guestfwd=tcp:ADDR:PORT-tcp:{LOOPBACK}:PORT` or `hostfwd=tcp:{LOOPBACK}:PORT-:PORT` (the host side is always {LOOPBACK})"
                ));
            }
            forwards.push(rule.to_string());
        }
        Ok(Self {
            uplink: true,
            forwards,
        })
    }
}

/// The virtio-net server's rights: guest RAM read-write (the virtqueues
/// and frames are there) and the console (its lines); no ports, no IRQs.
/// Its two channels come from the image's channel list.
pub fn virtio_net_rights() -> ipc_proto::manifest::Rights {
    ipc_proto::manifest::Rights {
        guest_ram: ipc_proto::manifest::GuestRam::ReadWrite,
        console: true,
        ..ipc_proto::manifest::Rights::default()
    }
}

/// The switch server's rights: the console (its lines) and nothing
/// else: no guest RAM (frames come through its channels' pages), no
/// ports, no IRQs. Its channels come from the image's channel list.
pub fn switch_rights() -> ipc_proto::manifest::Rights {
    ipc_proto::manifest::Rights {
        console: true,
        ..ipc_proto::manifest::Rights::default()
    }
}

/// What `--net user` adds to `system`: the nic-driver (unless `--nic`
/// added it), the switch server, the virtio-net server at the next free
/// PCI slot, the vmm-server's channel to it, its link channel to the
/// switch and the switch's uplink channel to the nic-driver, and the
/// forward rules for the emulator. PC board only.
pub fn add_net_servers(system: &mut images::SystemSpec, net: &NetSpec) -> Result<(), String> {
    if !system.more_vms.is_empty() {
        return add_shared_switch(system, net);
    }
    if !net.uplink {
        return Err(
            "--net switch joins several VMs (--vms N, --config); one VM takes --net user".into(),
        );
    }
    if system.board != ipc_proto::manifest::Board::Pc {
        return Err(
            "--net needs the PC board (--board pc): the ISA board has no PCI functions".into(),
        );
    }
    if !wants_nic(system) {
        add_nic_server(system)?;
    }
    system.pci_functions.push(VIRTIO_NET.into());
    system
        .device_channels
        .push(("vmm-server".into(), VIRTIO_NET.into()));
    system
        .device_channels
        .push((VIRTIO_NET.into(), SWITCH.into()));
    system
        .device_channels
        .push((SWITCH.into(), NIC_DRIVER.into()));
    let uplink = system
        .channel_number(SWITCH, NIC_DRIVER)
        .ok_or("the uplink channel has no number")?;
    let [elf] = images::build_for_target(&["switch"], [SWITCH])
        .map_err(|e| format!("building the switch server failed: {e}"))?;
    let config = uplink
        .checked_add(1)
        .ok_or("the uplink channel's number is too large")?;
    let elf = crate::disk::patch_config(&elf, &switch::CONFIG_MAGIC, config, "switch-patched")?;
    // After the nic-driver, before virtio-net: each calls the one before.
    system.device_servers.push(images::DeviceServer {
        name: SWITCH.into(),
        elf,
        rights: switch_rights(),
    });
    let link = system
        .channel_number(VIRTIO_NET, SWITCH)
        .ok_or("the link channel has no number")?;
    let [elf] = images::build_for_target(&["virtio-servers"], [VIRTIO_NET])
        .map_err(|e| format!("building the virtio-net server failed: {e}"))?;
    let config = link
        .checked_add(1)
        .ok_or("the link channel's number is too large")?;
    let elf = crate::disk::patch_config(
        &elf,
        &virtio_servers::net::CONFIG_MAGIC,
        config,
        "virtio-net-patched",
    )?;
    system.device_servers.push(images::DeviceServer {
        name: VIRTIO_NET.into(),
        elf,
        rights: virtio_net_rights(),
    });
    system.net_forwards = net.forwards.clone();
    Ok(())
}

/// `--net` with several VMs (`--vms N`, `--config`): each VM gets its
/// own virtio-net server (station address 02:53:56:00:00:0N for VM N-1),
/// whose link channel reaches one switch in no VM (`images::IN_NO_VM`:
/// no guest RAM, no VCPU, no ports, no IRQs); the switch learns per
/// port. With `user` its uplink is VM 0's nic-driver (the card's ports
/// and IRQ are VM 0's; the switch calls it across VMs), with `switch` it
/// has none.
fn add_shared_switch(system: &mut images::SystemSpec, net: &NetSpec) -> Result<(), String> {
    let switch = format!("{}{SWITCH}", images::IN_NO_VM);
    if net.uplink {
        if !wants_nic(system) {
            add_nic_server(system)?;
        }
        system
            .device_channels
            .push((switch.clone(), NIC_DRIVER.into()));
    }
    let [vnet] = images::build_for_target(&["virtio-servers"], [VIRTIO_NET])
        .map_err(|e| format!("building the virtio-net server failed: {e}"))?;
    for i in 0..=system.more_vms.len() {
        let spec = match i.checked_sub(1) {
            None => &mut *system,
            Some(n) => &mut system.more_vms[n],
        };
        if spec.board != ipc_proto::manifest::Board::Pc {
            return Err(format!(
                "--net needs the PC board (--board pc) in every VM; VM {i} has the ISA board"
            ));
        }
        spec.pci_functions.push(VIRTIO_NET.into());
        spec.device_channels
            .push(("vmm-server".into(), VIRTIO_NET.into()));
        spec.device_channels
            .push((VIRTIO_NET.into(), switch.clone()));
        let link = spec
            .channel_number(VIRTIO_NET, &switch)
            .and_then(|n| n.checked_add(1))
            .ok_or("the link channel has no number")?;
        let mac = u8::try_from(i + 1).map_err(|_| "too many VMs")?;
        let elf = crate::disk::patch_config_bytes(
            &vnet,
            &virtio_servers::net::CONFIG_MAGIC,
            &[link, mac],
            &format!("virtio-net-patched-vm{i}"),
        )?;
        spec.device_servers.push(images::DeviceServer {
            name: VIRTIO_NET.into(),
            elf,
            rights: virtio_net_rights(),
        });
    }
    let specs: Vec<images::SystemSpec> = std::iter::once(images::SystemSpec {
        more_vms: Vec::new(),
        ..system.clone()
    })
    .chain(system.more_vms.iter().cloned())
    .collect();
    // Its uplink: the one channel it calls.
    let channels = images::no_vm_channels(&specs, &[SWITCH])?;
    let uplink = channels
        .iter()
        .position(|(c, _)| c.client != ipc_proto::manifest::FAR_END)
        .map_or(Ok(0), |n| u8::try_from(n + 1))
        .map_err(|_| "too many channels")?;
    let [elf] = images::build_for_target(&["switch"], [SWITCH])
        .map_err(|e| format!("building the switch server failed: {e}"))?;
    let elf = crate::disk::patch_config(&elf, &switch::CONFIG_MAGIC, uplink, "switch-patched")?;
    system.no_vm_servers.push(images::DeviceServer {
        name: SWITCH.into(),
        elf,
        rights: switch_rights(),
    });
    system.net_forwards = net.forwards.clone();
    Ok(())
}

/// The nic-driver's rights: the card's ports (base..=base+0x1f: the
/// DP8390's registers, the data port, the reset port), its IRQ line and
/// the console (its lines); no guest RAM (the card has no DMA: frames move
/// through the data port), no channels yet.
pub fn nic_driver_rights() -> ipc_proto::manifest::Rights {
    let base = nic_driver::BASE;
    ipc_proto::manifest::Rights {
        ports: images::rights::ports(&[(base, base + ne2k::regs::PORTS - 1)]),
        irqs: 1 << nic_driver::IRQ,
        console: true,
        ..ipc_proto::manifest::Rights::default()
    }
}

/// What `--nic` adds to `system`: the nic-driver server, on either board
/// (the card is the machine's, not the guest's).
pub fn add_nic_server(system: &mut images::SystemSpec) -> Result<(), String> {
    let [elf] = images::build_for_target(&["nic-driver"], [NIC_DRIVER])
        .map_err(|e| format!("building the nic-driver server failed: {e}"))?;
    system.device_servers.push(images::DeviceServer {
        name: NIC_DRIVER.into(),
        elf,
        rights: nic_driver_rights(),
    });
    Ok(())
}

/// Whether `system` has the nic-driver, so that the machine needs the card.
pub fn wants_nic(system: &images::SystemSpec) -> bool {
    system.device_servers.iter().any(|d| d.name == NIC_DRIVER)
}

/// QEMU's arguments for the card: user-mode networking with
/// `restrict=on` (the machine reaches nothing outside QEMU) and the
/// `forwards` rules (`--net user,...`), an
/// `ne2k_isa` at the port and IRQ the nic-driver is built for.
pub fn qemu_args(forwards: &[String]) -> Vec<OsString> {
    let mut netdev = String::from("user,id=n0,restrict=on");
    for f in forwards {
        netdev.push(',');
        netdev.push_str(f);
    }
    [
        "-netdev",
        &netdev,
        "-device",
        &format!(
            "ne2k_isa,netdev=n0,iobase={:#x},irq={}",
            nic_driver::BASE,
            nic_driver::IRQ
        ),
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// Bochs's slirp configuration (the `ne2k:` line's `script=`; Bochs
/// ignores a file whose first line does not start `# slirp config`): no route
/// off the machine, as QEMU's `restrict=on`. Its other defaults are
/// QEMU's: the host at 10.0.2.2, DHCP from 10.0.2.15.
pub const BOCHS_SLIRP_CONF: &str =
    "# slirp config, made by `splitvisor run --nic user` for one run\nrestricted = 1\n";

/// Bochs's slirp configuration for `--net`'s forward rules: the
/// restricted network of [`BOCHS_SLIRP_CONF`] and a `hostfwd` line per
/// `hostfwd=` rule (Bochs's own format, `tcp:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT`,
/// the same as QEMU's). Bochs's slirp has no `guestfwd`: such a rule is
/// refused with the sentence saying so.
pub fn bochs_slirp_conf(forwards: &[String]) -> Result<String, String> {
    let mut conf = BOCHS_SLIRP_CONF.to_string();
    for rule in forwards {
        match rule.strip_prefix("hostfwd=") {
            Some(r) => conf.push_str(&format!("hostfwd = {r}\n")),
            None => {
                return Err(format!(
                    "`{rule}`: Bochs's user network (slirp) has no guestfwd; use QEMU, or a hostfwd rule"
                ))
            }
        }
    }
    Ok(conf)
}

/// Bochs's `ne2k:` line: the same card as QEMU's (QEMU's first MAC too),
/// behind Bochs's slirp configured by the file `script`
/// ([`BOCHS_SLIRP_CONF`]).
pub fn bochs_line(script: &str) -> String {
    format!(
        "ne2k: ioaddr={:#x}, irq={}, mac=52:54:00:12:34:56, ethmod=slirp, script={script}\n",
        nic_driver::BASE,
        nic_driver::IRQ
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bochs_takes_hostfwd_rules_and_refuses_guestfwd() {
        let spec =
            NetSpec::parse("user,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:127.0.0.1:5353-:53")
                .unwrap();
        assert_eq!(
            bochs_slirp_conf(&spec.forwards).unwrap(),
            format!("{BOCHS_SLIRP_CONF}hostfwd = tcp:127.0.0.1:2222-:22\nhostfwd = udp:127.0.0.1:5353-:53\n")
        );
        assert_eq!(bochs_slirp_conf(&[]).unwrap(), BOCHS_SLIRP_CONF);
        let spec = NetSpec::parse("user,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:8080").unwrap();
        let e = bochs_slirp_conf(&spec.forwards).unwrap_err();
        assert!(e.contains("has no guestfwd"), "{e}");
    }

    #[test]
    fn the_nic_driver_gets_its_ports_irq_and_console_only() {
        let r = nic_driver_rights();
        assert!(!r.vcpu && !r.install);
        assert_eq!(r.guest_ram, ipc_proto::manifest::GuestRam::None);
        assert_eq!(r.ports.len(), 1);
        assert_eq!((r.ports[0].first, r.ports[0].last), (0x300, 0x31f));
        assert!(!r.ports[0].is_forbidden());
        assert_eq!(r.irqs, 1 << 5);
        assert_eq!(r.irqs & ipc_proto::manifest::STUB_IRQS, 0);
        // Apart from the disk-driver's.
        let disk = crate::disk::disk_driver_rights();
        assert_eq!(r.irqs & disk.irqs, 0);
        assert!(!disk.ports.iter().any(|d| r.ports[0].overlaps(d)));
        let mut spec = images::SystemSpec::new("hello");
        spec.device_servers.push(images::DeviceServer {
            name: NIC_DRIVER.into(),
            elf: "unused".into(),
            rights: r,
        });
        assert!(wants_nic(&spec));
        let table = images::rights_table(&spec);
        let line = table.lines().find(|l| l.contains(NIC_DRIVER)).unwrap();
        assert!(line.contains(" 300-31f ") && line.ends_with(" 5"), "{line}");
    }

    #[test]
    fn only_the_restricted_user_network_is_offered() {
        assert_eq!(NicSpec::parse("user"), Ok(NicSpec::User));
        assert!(NicSpec::parse("tap")
            .unwrap_err()
            .contains("only one is `user`"));
        let args: Vec<String> = qemu_args(&[])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "-netdev",
                "user,id=n0,restrict=on",
                "-device",
                "ne2k_isa,netdev=n0,iobase=0x300,irq=5"
            ]
        );
    }

    #[test]
    fn net_takes_forward_rules_to_the_loopback_only() {
        let ok = NetSpec::parse(
            "user,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:8080,hostfwd=tcp:127.0.0.1:2222-:22",
        )
        .unwrap();
        assert_eq!(ok.forwards.len(), 2);
        let user = NetSpec {
            uplink: true,
            forwards: Vec::new(),
        };
        assert_eq!(NetSpec::parse("user"), Ok(user));
        // Several VMs joined to each other only: no uplink, no rules.
        assert_eq!(NetSpec::parse("switch"), Ok(NetSpec::default()));
        assert!(NetSpec::parse("switch,hostfwd=tcp:127.0.0.1:2222-:22").is_err());
        for bad in [
            "tap",
            "user,guestfwd=tcp:10.0.2.100:80-tcp:10.1.1.1:80",
            "user,guestfwd=tcp:10.0.2.100:80-cmd:nc example.org 80",
            "user,hostfwd=tcp::2222-:22",
            "user,hostfwd=tcp:0.0.0.0:2222-:22",
            "user,restrict=off",
            "user,",
        ] {
            assert!(NetSpec::parse(bad).is_err(), "{bad}");
        }
        let args: Vec<String> = qemu_args(&ok.forwards)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args[1],
            "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:8080,hostfwd=tcp:127.0.0.1:2222-:22"
        );
        let r = virtio_net_rights();
        assert!(!r.vcpu && !r.install && r.ports.is_empty() && r.irqs == 0 && r.console);
        assert_eq!(r.guest_ram, ipc_proto::manifest::GuestRam::ReadWrite);
        let r = switch_rights();
        assert!(!r.vcpu && !r.install && r.ports.is_empty() && r.irqs == 0 && r.console);
        assert_eq!(r.guest_ram, ipc_proto::manifest::GuestRam::None);
    }
}
