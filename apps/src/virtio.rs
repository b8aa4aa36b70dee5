//! virtio-pci device servers for the image (`splitvisor run --console
//! hvc0`, `--rng`): each is a ring-3 task of crate `virtio-servers`, a PCI function
//! on the PC board reached from the vmm-server over a channel
//! (`ipc_proto::pci`).

use ipc_proto::manifest::{GuestRam, Rights};

/// Where the guest's console is: COM1's 16550 (`ttyS0`, the default) or
/// a virtio console (`hvc0`) on PCI 00:03.0, served by the virtio-console
/// task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GuestConsole {
    /// COM1.
    #[default]
    Ttys0,
    /// The virtio console.
    Hvc0,
}

impl GuestConsole {
    /// `ttyS0` or `hvc0`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ttyS0" => Some(Self::Ttys0),
            "hvc0" => Some(Self::Hvc0),
            _ => None,
        }
    }

    /// The kernel's `console=` option.
    pub fn kernel_option(self) -> &'static str {
        match self {
            Self::Ttys0 => "console=ttyS0",
            Self::Hvc0 => "console=hvc0",
        }
    }
}

/// The task's name in the manifest.
pub const VIRTIO_CONSOLE: &str = "virtio-console";

/// The virtio-console server's rights: guest RAM read-write (the queues
/// and buffers, in place) and the host console (output, input); its
/// channel from the vmm-server is the image's.
pub fn virtio_console_rights() -> Rights {
    Rights {
        guest_ram: GuestRam::ReadWrite,
        console: true,
        ..Rights::default()
    }
}

/// Builds the virtio-console server for the bare target.
pub fn virtio_console_server() -> Result<images::DeviceServer, String> {
    let [elf] = images::build_for_target(&["virtio-servers"], [VIRTIO_CONSOLE])
        .map_err(|e| format!("building the virtio-console server failed: {e}"))?;
    Ok(images::DeviceServer {
        name: VIRTIO_CONSOLE.into(),
        elf,
        rights: virtio_console_rights(),
    })
}

/// Adds the virtio console to `spec`: its server, the channel to it, PCI
/// slot 00:03.0, host input to it.
pub fn add_virtio_console(spec: &mut images::SystemSpec) -> Result<(), String> {
    if spec.board != ipc_proto::manifest::Board::Pc {
        return Err(
            "--console hvc0 needs the PC board (--board pc): the ISA board has no PCI functions"
                .into(),
        );
    }
    spec.device_servers.push(virtio_console_server()?);
    spec.device_channels
        .push(("vmm-server".into(), VIRTIO_CONSOLE.into()));
    spec.pci_functions.push(VIRTIO_CONSOLE.into());
    spec.pci_takes_host_input = true;
    Ok(())
}

/// The virtio-rng task's name in the manifest.
pub const VIRTIO_RNG: &str = "virtio-rng";

/// The virtio-rng server's rights: guest RAM read-write (the queue and the
/// buffers it fills, in place); no console, no ports; its channel from the
/// vmm-server is the image's.
pub fn virtio_rng_rights() -> Rights {
    Rights {
        guest_ram: GuestRam::ReadWrite,
        ..Rights::default()
    }
}

/// Adds the virtio entropy device to `spec` (`--rng`): its server, the
/// channel to it, the next free PCI slot (after `--console hvc0`'s and
/// `--disk`'s functions).
pub fn add_virtio_rng(spec: &mut images::SystemSpec) -> Result<(), String> {
    if spec.board != ipc_proto::manifest::Board::Pc {
        return Err(
            "--rng needs the PC board (--board pc): the ISA board has no PCI functions".into(),
        );
    }
    let [elf] = images::build_for_target(&["virtio-servers"], [VIRTIO_RNG])
        .map_err(|e| format!("building the virtio-rng server failed: {e}"))?;
    spec.device_servers.push(images::DeviceServer {
        name: VIRTIO_RNG.into(),
        elf,
        rights: virtio_rng_rights(),
    });
    spec.device_channels
        .push(("vmm-server".into(), VIRTIO_RNG.into()));
    spec.pci_functions.push(VIRTIO_RNG.into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_virtio_console_gets_ram_console_and_its_channel_only() {
        let mut spec = images::SystemSpec::new("hello");
        spec.device_servers.push(images::DeviceServer {
            name: VIRTIO_CONSOLE.into(),
            elf: "unused".into(),
            rights: virtio_console_rights(),
        });
        spec.device_channels
            .push(("vmm-server".into(), VIRTIO_CONSOLE.into()));
        let table = images::rights_table(&spec);
        let line = table
            .lines()
            .find(|l| l.contains(VIRTIO_CONSOLE))
            .expect("a line for the server");
        assert!(line.contains(" rw ") && line.contains("yes"), "{line}");
        let r = virtio_console_rights();
        assert!(!r.vcpu && !r.install && r.ports.is_empty() && r.irqs == 0);
        assert_eq!(GuestConsole::from_name("hvc0"), Some(GuestConsole::Hvc0));
        assert_eq!(GuestConsole::Hvc0.kernel_option(), "console=hvc0");
    }

    #[test]
    fn the_virtio_rng_gets_ram_and_its_channel_only() {
        let mut spec = images::SystemSpec::new("hello");
        spec.device_servers.push(images::DeviceServer {
            name: VIRTIO_RNG.into(),
            elf: "unused".into(),
            rights: virtio_rng_rights(),
        });
        spec.device_channels
            .push(("vmm-server".into(), VIRTIO_RNG.into()));
        let table = images::rights_table(&spec);
        let line = table
            .lines()
            .find(|l| l.contains(VIRTIO_RNG))
            .expect("a line for the server");
        assert!(line.contains(" rw "), "{line}");
        let r = virtio_rng_rights();
        assert!(!r.vcpu && !r.install && !r.console && r.ports.is_empty() && r.irqs == 0);
    }

    #[test]
    fn rng_is_refused_on_the_isa_board() {
        let mut spec = images::SystemSpec::new("hello");
        spec.board = ipc_proto::manifest::Board::Isa;
        let e = add_virtio_rng(&mut spec).unwrap_err();
        assert!(e.contains("--board pc"), "{e}");
        assert!(spec.pci_functions.is_empty());
    }
}
