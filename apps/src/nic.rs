//! `--nic user`: the machine's own network card, an NE2000 on the ISA
//! bus (QEMU's `ne2k_isa`, Bochs's `ne2k:`) behind the emulator's
//! user-mode network (slirp), restricted to the machine itself; the unprivileged nic-driver server (crate
//! `nic-driver`, over the `ne2k` driver) drives it with its 32 ports and
//! its IRQ line. The guest does not see this card.
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
/// `restrict=on` (the machine reaches nothing outside QEMU), an
/// `ne2k_isa` at the port and IRQ the nic-driver is built for.
pub fn qemu_args() -> Vec<OsString> {
    [
        "-netdev",
        "user,id=n0,restrict=on",
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
        let args: Vec<String> = qemu_args()
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
}
