//! Which capabilities each component gets, from its manifest task's
//! [`Rights`]: the seL4 counterpart of the native stub's rights checks.
//!
//! | right | on seL4 |
//! |---|---|
//! | `vcpu` with every exit class but `SHADOW_MMU` | the VCPU (bound to the thread, the guest's EPT as its root) |
//! | `vcpu` with `SHADOW_MMU` alone | nothing: EPT never raises those exits |
//! | `vcpu` with another part of the exits | refused: seL4 gives every exit of a VCPU to the thread that runs it |
//! | the VCPU's exits include `NPF` | a send capability to the endpoint of the task with `install` (EPT violations on guest RAM) |
//! | `install` | the EPT's PML4, PDPT and page directory, the guest-RAM frames, the receive side of its endpoint |
//! | `guest_ram` | guest RAM mapped into its VSpace, read-only or read-write (no frame capability); with `install`, the frames already carry it |
//! | `console` | nothing: a debug kernel's `seL4_DebugPutChar` is open to every thread, so a task *without* it is refused |
//! | `ports`, `irqs` | refused: not handed to components yet |
//!
//! Every component also gets two badged capabilities to the root task's
//! endpoint (its report and its faults). A task that is not one of the
//! two components the payload carries (`vmm-server`, `mmu-server`), a
//! channel, or a capability a component's contract has no slot for is
//! refused too: [`Refused`] says which in one sentence.

use core::fmt;

use ipc_proto::manifest::{Channel, ExitClasses, GuestRam, MmuMode, Rights, TASK_NAME_MAX};

/// The components the root task can place: the ELFs its payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Vmm,
    Mmu,
}

impl Component {
    /// Its task's name in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vmm => "vmm-server",
            Self::Mmu => "mmu-server",
        }
    }

    fn of(name: &str) -> Option<Self> {
        [Self::Vmm, Self::Mmu]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

/// What one component gets besides its report and fault capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// The VCPU, bound to its thread, with the guest's EPT as its root.
    pub vcpu: bool,
    /// A send capability to the endpoint of the task with `install`.
    pub mmu_endpoint: bool,
    /// Guest RAM mapped into its VSpace (mappings, not capabilities).
    pub guest_ram: GuestRam,
    /// The EPT's three objects and the guest-RAM frames.
    pub ept: bool,
    /// The receive side of the endpoint the EPT violations arrive on.
    pub exits_endpoint: bool,
}

impl Caps {
    /// The capabilities in its CSpace with `frames` guest-RAM frames.
    pub fn count(&self, frames: u64) -> u64 {
        2 + u64::from(self.vcpu)
            + u64::from(self.mmu_endpoint)
            + if self.ept { 3 + frames } else { 0 }
            + u64::from(self.exits_endpoint)
    }
}

/// Both components' capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub vmm: Caps,
    pub mmu: Caps,
}

type Name = heapless::String<TASK_NAME_MAX>;

/// Why the root task cannot run the manifest: one sentence each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Shadow paging.
    Shadow,
    /// A task the payload has no component for.
    NotAComponent(Name),
    /// Two tasks with one component's name.
    Twice(Name),
    /// A right of `task`: what it is, and why seL4 cannot give it.
    Right {
        task: Name,
        right: &'static str,
        why: &'static str,
    },
    /// A channel between two tasks.
    Channel(Name, Name),
    /// No task runs the VCPU.
    NoVcpu,
    /// The VCPU's EPT violations would go nowhere.
    NoInstall,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shadow => f.write_str(
                "shadow paging has no counterpart on seL4: its VCPUs always run on EPT",
            ),
            Self::NotAComponent(t) => write!(
                f,
                "the task {t} cannot be placed on seL4: the root task carries components for the vmm-server and the mmu-server only"
            ),
            Self::Twice(t) => write!(f, "the image has two tasks named {t}"),
            Self::Right { task, right, why } => {
                write!(f, "the {task}'s right to {right} cannot be given on seL4: {why}")
            }
            Self::Channel(c, s) => write!(
                f,
                "the channel from the {c} to the {s} cannot be given on seL4: channels between components are not built yet"
            ),
            Self::NoVcpu => f.write_str(
                "no task has the vcpu right with the guest's exits: nothing would run the guest",
            ),
            Self::NoInstall => f.write_str(
                "no task has the install right: nothing would build the guest's EPT",
            ),
        }
    }
}

fn name(s: &str) -> Name {
    let mut n = Name::new();
    for ch in s.chars() {
        if n.push(ch).is_err() {
            break;
        }
    }
    n
}

/// The capabilities of one task's rights, before the endpoint between the
/// VCPU's task and the task with `install` is known.
fn caps_of(task: &str, r: &Rights) -> Result<Caps, Refused> {
    let refuse = |right, why| Refused::Right {
        task: name(task),
        right,
        why,
    };
    if !r.ports.is_empty() {
        return Err(refuse(
            "I/O ports",
            "I/O port capabilities are not handed to components yet",
        ));
    }
    if r.irqs != 0 {
        return Err(refuse(
            "IRQ lines",
            "IRQ handlers are not handed to components yet",
        ));
    }
    if !r.console {
        return Err(refuse(
            "no console (it lacks the console right)",
            "seL4_DebugPutChar is open to every thread, so it cannot be held to that",
        ));
    }
    let guest_exits = ExitClasses::all() - ExitClasses::SHADOW_MMU;
    let vcpu = match (r.vcpu, r.exits - ExitClasses::SHADOW_MMU) {
        (false, e) if e.is_empty() && r.exits.is_empty() => false,
        (false, _) => {
            return Err(refuse(
                "exits without the vcpu right",
                "only the VCPU's thread receives exits",
            ))
        }
        // The shadow MMU's exits alone: EPT never raises them.
        (true, e) if e.is_empty() => false,
        (true, e) if e.contains(guest_exits) => true,
        (true, _) => {
            return Err(refuse(
                "a part of the guest's exits",
                "seL4 gives every exit of a VCPU to the one thread that runs it",
            ))
        }
    };
    if vcpu && r.install {
        return Err(refuse(
            "both the VCPU and the EPT (vcpu and install)",
            "the VCPU's thread forwards EPT violations on guest RAM to another component",
        ));
    }
    Ok(Caps {
        vcpu,
        mmu_endpoint: false,
        // The frames carry every right to guest RAM already.
        guest_ram: if r.install {
            GuestRam::None
        } else {
            r.guest_ram
        },
        ept: r.install,
        exits_endpoint: r.install,
    })
}

/// Each component's capabilities for the manifest's `tasks` (name and
/// rights), `channels` and MMU mode, or why the root task cannot run it.
pub fn plan(
    tasks: &[(&str, &Rights)],
    channels: &[Channel],
    mmu: MmuMode,
) -> Result<Plan, Refused> {
    if mmu.is_shadow() {
        return Err(Refused::Shadow);
    }
    let (mut vmm, mut mmu) = (None, None);
    for &(task, rights) in tasks {
        let component = Component::of(task).ok_or_else(|| Refused::NotAComponent(name(task)))?;
        let slot = match component {
            Component::Vmm => &mut vmm,
            Component::Mmu => &mut mmu,
        };
        if slot.is_some() {
            return Err(Refused::Twice(name(task)));
        }
        *slot = Some(caps_of(task, rights)?);
    }
    if let Some(c) = channels.first() {
        let task = |i: u8| name(tasks.get(usize::from(i)).map_or("?", |t| t.0));
        return Err(Refused::Channel(task(c.client), task(c.server)));
    }
    // What each component's contract has slots for.
    let misplaced = |c: Component, right| Refused::Right {
        task: name(c.name()),
        right,
        why: "its seL4 component has no place for what it gives",
    };
    let mmu_caps = mmu.unwrap_or_default();
    if mmu_caps.vcpu {
        return Err(misplaced(Component::Mmu, "the guest's exits (vcpu)"));
    }
    let Some(mut vmm_caps) = vmm.filter(|c| c.vcpu) else {
        return Err(Refused::NoVcpu);
    };
    if vmm_caps.ept {
        return Err(misplaced(Component::Vmm, "build the EPT (install)"));
    }
    // The VCPU's exits include NPF: its EPT violations on guest RAM go to
    // the task with install.
    if !mmu_caps.ept {
        return Err(Refused::NoInstall);
    }
    vmm_caps.mmu_endpoint = true;
    Ok(Plan {
        vmm: vmm_caps,
        mmu: mmu_caps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::manifest::PortRange;

    /// The vmm-server's and the mmu-server's rights in the manifest of a
    /// real image (`splitvisor build --guest hello`).
    fn real() -> (Rights, Rights) {
        let spec = images::SystemSpec::new("hello");
        let (tasks, channels) = images::system_tasks(&spec);
        assert!(channels.is_empty());
        let get = |n| tasks.iter().find(|t| t.0 == n).unwrap().1.clone();
        (get("vmm-server"), get("mmu-server"))
    }

    fn vmm() -> Rights {
        real().0
    }

    fn mmu() -> Rights {
        real().1
    }

    fn plan_of(vmm: &Rights, mmu: &Rights) -> Result<Plan, Refused> {
        plan(
            &[("vmm-server", vmm), ("mmu-server", mmu)],
            &[],
            MmuMode::Nested,
        )
    }

    #[test]
    fn the_servers_rights_give_todays_capabilities() {
        let p = plan_of(&vmm(), &mmu()).unwrap();
        assert_eq!(
            p.vmm,
            Caps {
                vcpu: true,
                mmu_endpoint: true,
                guest_ram: GuestRam::ReadWrite,
                ept: false,
                exits_endpoint: false,
            }
        );
        assert_eq!(
            p.mmu,
            Caps {
                vcpu: false,
                mmu_endpoint: false,
                guest_ram: GuestRam::None,
                ept: true,
                exits_endpoint: true,
            }
        );
        // sel4_vmm_server's four slots; the mmu-server's six and its frames.
        assert_eq!(p.vmm.count(8), sel4_vmm_server::CAPABILITIES);
        assert_eq!(p.mmu.count(8), 6 + 8);
    }

    #[test]
    fn a_right_removed_removes_its_capability() {
        let mut r = vmm();
        r.guest_ram = GuestRam::ReadOnly;
        assert_eq!(
            plan_of(&r, &mmu()).unwrap().vmm.guest_ram,
            GuestRam::ReadOnly
        );
        r.guest_ram = GuestRam::None;
        assert_eq!(plan_of(&r, &mmu()).unwrap().vmm.guest_ram, GuestRam::None);
        // Without install the mmu-server gets neither the EPT nor the
        // frames; then nothing would serve the VCPU's EPT violations.
        let mut m = mmu();
        m.install = false;
        assert_eq!(plan_of(&vmm(), &m), Err(Refused::NoInstall));
        // Its vcpu right gives nothing on seL4 (shadow exits only) either way.
        m = mmu();
        m.vcpu = false;
        m.exits = ExitClasses::empty();
        assert_eq!(
            plan_of(&vmm(), &m).unwrap(),
            plan_of(&vmm(), &mmu()).unwrap()
        );
        // Without the vcpu right nothing runs the guest.
        let mut r = vmm();
        r.vcpu = false;
        r.exits = ExitClasses::empty();
        assert_eq!(plan_of(&r, &mmu()), Err(Refused::NoVcpu));
    }

    #[test]
    fn rights_without_an_sel4_counterpart_refuse_in_one_sentence() {
        let said = |vmm: &Rights, mmu: &Rights| {
            let e = plan_of(vmm, mmu).unwrap_err();
            let mut s = heapless::String::<300>::new();
            fmt::write(&mut s, format_args!("{e}")).unwrap();
            s
        };
        let mut r = vmm();
        r.ports
            .push(PortRange {
                first: 0x1f0,
                last: 0x1f7,
            })
            .unwrap();
        assert_eq!(
            said(&r, &mmu()),
            "the vmm-server's right to I/O ports cannot be given on seL4: I/O port capabilities are not handed to components yet"
        );
        let mut m = mmu();
        m.irqs = 1 << 14;
        assert!(said(&vmm(), &m).starts_with("the mmu-server's right to IRQ lines"));
        let mut r = vmm();
        r.console = false;
        assert!(said(&r, &mmu()).contains("seL4_DebugPutChar"));
        let mut r = vmm();
        r.exits = ExitClasses::IOIO | ExitClasses::HLT;
        assert!(said(&r, &mmu()).contains("a part of the guest's exits"));
        let mut r = vmm();
        r.install = true;
        assert!(said(&r, &mmu()).contains("vcpu and install"));
        let mut m = mmu();
        m.exits = ExitClasses::all() - ExitClasses::SHADOW_MMU;
        m.install = false;
        let mut r = vmm();
        r.vcpu = false;
        r.exits = ExitClasses::empty();
        assert!(said(&r, &m).starts_with("the mmu-server's right to the guest's exits"));
    }

    #[test]
    fn tasks_and_channels_the_root_task_cannot_place_refuse() {
        let (v, m) = (vmm(), mmu());
        let mut spec = images::SystemSpec::new("hello");
        spec.uart_server = true;
        let (tasks, channels) = images::system_tasks(&spec);
        let tasks: std::vec::Vec<_> = tasks.iter().map(|(n, r)| (*n, r)).collect();
        assert_eq!(
            plan(&tasks, &channels, MmuMode::Nested),
            Err(Refused::NotAComponent(name("uart-server")))
        );
        let tasks = [("vmm-server", &v), ("mmu-server", &m)];
        let ch = [Channel {
            client: 0,
            server: 1,
        }];
        assert_eq!(
            plan(&tasks, &ch, MmuMode::Nested),
            Err(Refused::Channel(name("vmm-server"), name("mmu-server")))
        );
        let twice = [("vmm-server", &v), ("vmm-server", &v), ("mmu-server", &m)];
        assert_eq!(
            plan(&twice, &[], MmuMode::Nested),
            Err(Refused::Twice(name("vmm-server")))
        );
        assert_eq!(plan(&tasks, &[], MmuMode::Shadow), Err(Refused::Shadow));
        assert_eq!(
            plan(&[("mmu-server", &m)], &[], MmuMode::Nested),
            Err(Refused::NoVcpu)
        );
    }
}
