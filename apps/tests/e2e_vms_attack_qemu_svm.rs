//! End-to-end, issue 13's isolation case: the hostile servers' main
//! campaign (`splitvisor attack`'s mmu-server and vmm-server: installs
//! outside guest RAM, unknown table handles, channels and tasks they do
//! not have, bad resumes) runs as VM 0 while VM 1, with the real servers,
//! runs the `timer` guest. Whatever the campaign does to VM 0, the stub
//! refuses it or ends VM 0 alone: no escape, no stub fault, and VM 1
//! passes every check and stops with status 0.

use std::time::Duration;

use splitvisor::attack::{beside_a_vm, AttackOptions};

#[test]
fn hostile_servers_in_one_vm_leave_the_other_vm_intact() {
    let opts = AttackOptions {
        short: true,
        timeout: Duration::from_secs(240),
        ..AttackOptions::default()
    };
    let (last, console, timed) = beside_a_vm(&opts, "timer").expect("the run starts");
    let show = || format!("final line {last:?}\n{console}");
    let lines: Vec<&str> = console.lines().collect();
    for line in [
        "[vm1] timer: all checks passed",
        "[stub] vm1: vm stopped: guest status 0",
        "[vm0] attack: done mmu",
        "[vm0] attack: done vmm",
        // The probe guest after the campaign: VM 0 still works too.
        "[vm0] hello from the guest",
    ] {
        assert!(lines.contains(&line), "no line {line:?}\n{}", show());
    }
    assert!(
        !lines.iter().any(|l| l.contains("attack: escape")),
        "{}",
        show()
    );
    assert!(!console.contains("stub fault"), "{}", show());
    assert!(
        lines.iter().any(|l| l.starts_with("[stub] | vm1 | exits ")
            && l.ends_with(" | stopped with guest status 0")),
        "{}",
        show()
    );
    // `attack --beside` times VM 1's checks from these lines.
    assert!(
        splitvisor::attack::timer_span(&timed, "[vm1] ").is_some(),
        "{}",
        show()
    );
}

/// Bad input between VMs (issue 13): a hostile port of the switch in no
/// VM, a task of VM 0, names channels that are not its own (all refused)
/// and sends a runt, a giant, a multicast-source frame and a flood of 100
/// broadcast frames. The switch drops and counts the bad ones at its
/// port, and each VM port's queue takes at most its share (8 of 16) of
/// the flood, the rest dropped and counted there; both `timer` guests
/// pass. About 12 s.
#[test]
fn a_hostile_port_of_the_shared_switch_is_dropped_and_counted() {
    let opts = AttackOptions {
        timeout: Duration::from_secs(240),
        ..AttackOptions::default()
    };
    let (last, console) =
        splitvisor::attack::hostile_link_beside_a_vm(&opts).expect("the run starts");
    let show = || format!("final line {last:?}\n{console}");
    let lines: Vec<&str> = console.lines().collect();
    for line in [
        "[vm0] timer: all checks passed",
        "[vm1] timer: all checks passed",
        "[vm0] hostile-link: 21 of 21 calls naming what is not its own refused",
        "[stub] vm stopped: guest status 0",
    ] {
        assert!(lines.contains(&line), "no line {line:?}\n{}", show());
    }
    let sent = lines
        .iter()
        .find_map(|l| l.strip_prefix("[vm0] hostile-link: sent a runt, a giant, a multicast source and 100 broadcast frames "))
        .unwrap_or_else(|| panic!("no flood line\n{}", show()));
    // BAD_LENGTH (2) for the runt and the giant; the multicast source is
    // dropped silently (OK), and the switch takes every flood frame.
    assert_eq!(sent, "(status 2, 2, 0; 100 taken)", "{}", show());
    // The switch's last line for each port: the hostile one is port 3
    // (after the two virtio-net servers, which call at their start).
    let sys = console.replace("[sys] ", "");
    let port = |p: &str| {
        let all: Vec<&str> = sys
            .lines()
            .filter_map(|l| l.strip_prefix("switch: "))
            .filter(|l| l.contains(&format!("port {p} vm ch ")))
            .collect();
        let line = all
            .last()
            .unwrap_or_else(|| panic!("no port {p}\n{}", show()));
        let n = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.split('/').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line}"))
        };
        (
            n("in"),
            n("out"),
            n("runt"),
            n("giant"),
            n("srcmc"),
            n("full"),
        )
    };
    let (inn, _, runt, giant, srcmc, _) = port("3");
    assert_eq!((inn, runt, giant, srcmc), (103, 1, 1, 1), "{}", show());
    for p in ["1", "2"] {
        let (_, out, _, _, _, full) = port(p);
        assert_eq!(out + full, 100, "port {p}\n{}", show());
        assert!(out <= 8, "port {p} took {out} of the flood\n{}", show());
    }
}
