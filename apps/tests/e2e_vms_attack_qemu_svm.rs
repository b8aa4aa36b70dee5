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
    let (last, console) = beside_a_vm(&opts, "timer").expect("the run starts");
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
}
