//! The rights each server of an image gets, and the table
//! `splitvisor build --show-rights` prints.
//!
//! The stub knows tasks only by their rights (`ipc_proto::manifest::Rights`):
//! a new server is one more [`TaskInput`](crate::TaskInput) with a name, an
//! ELF and the rights below, e.g. a disk driver:
//!
//! ```
//! use ipc_proto::manifest::{GuestRam, PortRange, Rights};
//! let disk = Rights {
//!     guest_ram: GuestRam::ReadWrite,
//!     ports: images::rights::ports(&[(0x1f0, 0x1f7), (0x3f6, 0x3f6)]),
//!     irqs: 1 << 14,
//!     console: true,
//!     ..Rights::default()
//! };
//! assert!(images::rights::table(&[("disk-server", &disk)], &[]).contains("1f0-1f7"));
//! ```

use std::fmt::Write;

use ipc_proto::manifest::{Channel, ExitClasses, GuestRam, PortRange, Rights, MAX_PORT_RANGES};

/// The vmm-server: runs the VCPU, receives every exit but the shadow
/// MMU's, reads and writes guest RAM, writes the console.
pub fn vmm_server() -> Rights {
    Rights {
        vcpu: true,
        exits: ExitClasses::all() - ExitClasses::SHADOW_MMU,
        guest_ram: GuestRam::ReadWrite,
        console: true,
        ..Rights::default()
    }
}

/// The mmu-server: runs the VCPU for the shadow MMU's exits, installs
/// page tables, reads and writes guest RAM (the guest's page tables, its
/// accessed and dirty bits), and writes the console (its failure reasons).
pub fn mmu_server() -> Rights {
    Rights {
        vcpu: true,
        exits: ExitClasses::SHADOW_MMU,
        install: true,
        guest_ram: GuestRam::ReadWrite,
        console: true,
        ..Rights::default()
    }
}

/// The uart-server: the host console, nothing else.
pub fn uart_server() -> Rights {
    Rights {
        console: true,
        ..Rights::default()
    }
}

/// Port ranges `(first, last)` (inclusive) as a manifest field; at most
/// [`MAX_PORT_RANGES`] (panics beyond: a builder's mistake).
pub fn ports(ranges: &[(u16, u16)]) -> heapless::Vec<PortRange, MAX_PORT_RANGES> {
    ranges
        .iter()
        .map(|&(first, last)| PortRange { first, last })
        .collect::<heapless::Vec<_, MAX_PORT_RANGES>>()
}

fn exit_names(e: ExitClasses) -> String {
    if e == ExitClasses::all() - ExitClasses::SHADOW_MMU {
        return "all but shadow-mmu".into();
    }
    let names: Vec<String> = e
        .iter_names()
        .map(|(n, _)| n.to_ascii_lowercase().replace('_', "-"))
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// A table of who may do what: one line per task (by its index, which is
/// what channels name), then one per channel.
pub fn table(tasks: &[(&str, &Rights)], channels: &[Channel]) -> String {
    let mut out = String::new();
    let yes = |b: bool| if b { "yes" } else { "-" };
    let _ = writeln!(
        out,
        "{:<3} {:<16} {:<5} {:<20} {:<7} {:<9} {:<7} {:<24} irqs",
        "#", "task", "vcpu", "exits", "install", "guest-ram", "console", "ports"
    );
    for (i, (name, r)) in tasks.iter().enumerate() {
        let ram = match r.guest_ram {
            GuestRam::None => "-",
            GuestRam::ReadOnly => "ro",
            GuestRam::ReadWrite => "rw",
        };
        let ports: Vec<String> = r
            .ports
            .iter()
            .map(|p| {
                if p.first == p.last {
                    format!("{:x}", p.first)
                } else {
                    format!("{:x}-{:x}", p.first, p.last)
                }
            })
            .collect();
        let irqs: Vec<String> = (0..16)
            .filter(|l| r.irqs & (1 << l) != 0)
            .map(|l| l.to_string())
            .collect();
        let dash = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let _ = writeln!(
            out,
            "{i:<3} {name:<16} {:<5} {:<20} {:<7} {ram:<9} {:<7} {:<24} {}",
            yes(r.vcpu),
            exit_names(r.exits),
            yes(r.install),
            yes(r.console),
            dash(ports),
            dash(irqs)
        );
    }
    for (n, c) in channels.iter().enumerate() {
        let name = |i: u8| match tasks.get(usize::from(i)) {
            Some(t) => t.0,
            None if i == ipc_proto::manifest::FAR_END => "a task in no VM",
            None => "?",
        };
        let _ = writeln!(
            out,
            "channel {n}: {} calls {} (both may Signal the other)",
            name(c.client),
            name(c.server)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_who_may_do_what() {
        let (v, m, u) = (vmm_server(), mmu_server(), uart_server());
        let t = table(
            &[("vmm-server", &v), ("mmu-server", &m), ("uart-server", &u)],
            &[Channel {
                client: 0,
                server: 2,
            }],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("vmm-server") && lines[1].contains("all but shadow-mmu"),
            "{t}"
        );
        assert!(
            lines[2].contains("shadow-mmu") && lines[2].contains(" rw "),
            "{t}"
        );
        assert!(lines[3].contains("uart-server"), "{t}");
        assert_eq!(
            lines[4],
            "channel 0: vmm-server calls uart-server (both may Signal the other)"
        );
    }

    #[test]
    fn the_three_servers_rights_pass_the_stubs_checks() {
        assert_eq!(
            vmm_server().exits & mmu_server().exits,
            ExitClasses::empty()
        );
        assert_eq!(vmm_server().exits | mmu_server().exits, ExitClasses::all());
    }
}
