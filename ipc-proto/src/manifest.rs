//! The boot manifest: the static description of a system image, written by
//! the image builder and read once by the stub at boot.
//!
//! An image is the stub followed, at the page boundary where the stub's own
//! image ends, by a payload:
//!
//! ```text
//! +----------------------+ payload offset 0
//! | PayloadHeader        |  fixed layout, 16 bytes
//! | manifest (postcard)  |  `manifest_len` bytes
//! | blobs ...            |  server ELFs and guest images; `Blob` offsets
//! +----------------------+  count from payload offset 0
//! ```

use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of every payload.
pub const PAYLOAD_MAGIC: [u8; 8] = *b"SPLTVSR1";

/// Largest manifest the stub reads.
pub const MANIFEST_MAX: usize = 4096;

/// Most tasks a VM may hold.
pub const MAX_TASKS: usize = 16;

/// Most VMs an image may hold: its manifest area holds one [`Manifest`]
/// per VM, back to back (an image of one VM is as before).
pub const MAX_VMS: usize = 4;

/// The fixed header in front of the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PayloadHeader {
    /// [`PAYLOAD_MAGIC`].
    pub magic: [u8; 8],
    /// [`crate::ABI_VERSION`] of the builder.
    pub abi_version: u32,
    /// Length of the postcard-encoded [`Manifest`] that follows.
    pub manifest_len: u32,
}

/// A byte range of the payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// Offset from the start of the payload.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// Longest task name, in bytes.
pub const TASK_NAME_MAX: usize = 16;

/// Most I/O port ranges one task may be granted.
pub const MAX_PORT_RANGES: usize = 4;

bitflags::bitflags! {
    /// Classes of VM exits, as routing data: each exit goes to the one task
    /// whose [`Rights::exits`] holds its class. (The stub's statistics
    /// classes, plus the shadow MMU's exits.)
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExitClasses: u32 {
        /// A shadowed guest's page faults, CR accesses and EFER
        /// RDMSR/WRMSR (never under nested paging): the mmu-server's.
        const SHADOW_MMU = 1 << 0;
        /// IN/OUT/INS/OUTS.
        const IOIO = 1 << 1;
        /// HLT.
        const HLT = 1 << 2;
        /// CPUID.
        const CPUID = 1 << 3;
        /// RDMSR/WRMSR (other than a shadowed guest's EFER).
        const MSR = 1 << 4;
        /// Nested page faults (NPF, EPT violation and misconfiguration).
        const NPF = 1 << 5;
        /// Intercepted exceptions (other than a shadowed guest's #PF).
        const EXCEPTION = 1 << 6;
        /// Shutdown (triple fault).
        const SHUTDOWN = 1 << 7;
        /// A failed entry.
        const INVALID = 1 << 8;
        /// A host interrupt: the exit deadline's timer or a device IRQ.
        const HOST_INTERRUPT = 1 << 9;
        /// Every other exit.
        const OTHER = 1 << 10;
    }
}

/// How guest RAM is mapped into a task at `stub_abi::layout::GUEST_RAM_WINDOW`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestRam {
    /// Not mapped.
    #[default]
    None,
    /// Mapped without write permission.
    ReadOnly,
    /// Mapped read-write.
    ReadWrite,
}

/// An inclusive range of host I/O ports, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

/// Host I/O ports the stub itself drives (COM1 console, PIT, both 8259s,
/// port 0x61 (PIT channel 2 gate), QEMU's debug-exit, Bochs's shutdown
/// port and port 0xE9): no task may be granted any of them; the stub
/// refuses a manifest that tries.
pub const STUB_PORTS: [PortRange; 8] = [
    PortRange {
        first: 0x20,
        last: 0x21,
    },
    PortRange {
        first: 0x40,
        last: 0x43,
    },
    PortRange {
        first: 0x61,
        last: 0x61,
    },
    PortRange {
        first: 0xa0,
        last: 0xa1,
    },
    PortRange {
        first: 0xe9,
        last: 0xe9,
    },
    PortRange {
        first: 0xf4,
        last: 0xf4,
    },
    PortRange {
        first: 0x3f8,
        last: 0x3ff,
    },
    PortRange {
        first: 0x8900,
        last: 0x8900,
    },
];

/// Host 8259 IRQ lines the stub keeps: 0 (the PIT, its exit deadline) and 2
/// (the cascade to the second 8259).
pub const STUB_IRQS: u16 = (1 << 0) | (1 << 2);

impl PortRange {
    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Whether the range names a port the stub drives, or is empty.
    pub fn is_forbidden(&self) -> bool {
        self.first > self.last || STUB_PORTS.iter().any(|s| s.overlaps(self))
    }
}

/// What one task may do: every system call checks the caller's rights.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    /// Runs the VCPU and receives exits: gets a VCPU page
    /// (`stub_abi::layout::VCPU_PAGE`); may call `VcpuRun`, `StatsRead`, `VmStop`.
    pub vcpu: bool,
    /// The exits it receives (needs `vcpu`); no two tasks share a class.
    pub exits: ExitClasses,
    /// Builds the VM's page tables: an install page; may call
    /// `ShadowAlloc`, `ShadowFree`, `MmuInstall`, `MmuFlush`,
    /// `VcpuForward`, and resume with `SET_PAGING` (shadow) or
    /// `SET_NESTED_ROOT`.
    pub install: bool,
    /// Guest RAM in its address space.
    pub guest_ram: GuestRam,
    /// Host I/O ports it may use with IN/OUT while it runs.
    pub ports: heapless::Vec<PortRange, MAX_PORT_RANGES>,
    /// Host 8259 IRQ lines (bit n: line n) it owns: each sets a bit in its
    /// notification word (`stub_abi::syscall::irq_bit`), `IrqAck` unmasks it again.
    pub irqs: u16,
    /// May write to and read from the host console.
    pub console: bool,
}

/// Most channels an image may have.
pub const MAX_CHANNELS: usize = 16;

/// A call/reply channel between two tasks (by their index in
/// [`Manifest::tasks`]); its number is its index in [`Manifest::channels`].
/// One end may be [`FAR_END`]: a channel across VMs, whose other end is a
/// task in no VM ([`Link`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The task that calls.
    pub client: u8,
    /// The task that serves.
    pub server: u8,
}

/// The end of a channel that lies in another manifest: a [`Link`] of the
/// tasks in no VM says which.
pub const FAR_END: u8 = 0x80;

/// A channel across VMs: channel `channel` of the tasks in no VM (the
/// manifest without a guest) and channel `vm_channel` of VM `vm` are one
/// channel (one page). Each side's entry names its own task at one end and
/// [`FAR_END`] at the other, opposite ends: a VM's task may call a task in
/// no VM, or serve one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The channel's number among the tasks in no VM.
    pub channel: u8,
    /// The VM (its manifest's place in the image).
    pub vm: u8,
    /// The channel's number in that VM.
    pub vm_channel: u8,
}

/// The processor state the guest starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryMode {
    /// Flat 32-bit protected mode, paging off (CS and data segments: base 0,
    /// limit 4 GiB): what multiboot and the 32-bit Linux boot protocol hand over.
    Flat32,
    /// Real mode with CS = DS = ES = SS = 0, as a BIOS leaves a boot sector
    /// at 0x7c00 (DL = 0x80, the first hard disk).
    Real16,
}

/// How guest-physical memory is virtualized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmuMode {
    /// Nested paging (AMD NPT / Intel EPT).
    Nested,
    /// Shadow paging by the mmu-server, its shadow tables a cache that
    /// survives CR3 loads.
    Shadow,
    /// Shadow paging as the first KVM did it (2006): every CR3 load drops
    /// every shadow table. For comparison.
    ShadowBaseline,
}

impl MmuMode {
    /// Either kind of shadow paging.
    pub fn is_shadow(self) -> bool {
        matches!(self, Self::Shadow | Self::ShadowBaseline)
    }
}

/// The machine around the guest: which devices the vmm-server emulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Board {
    /// The ISA PC of the first KVM: 8259 pair, 8254, RTC, 16550, i8042.
    Isa,
    /// The PC that today's guests expect (the default): the ISA devices,
    /// plus a local APIC, an I/O APIC, ACPI (tables in guest RAM, PM timer,
    /// S5 power off) and QEMU's fw_cfg.
    #[default]
    Pc,
}

/// More bytes to place in guest RAM before the first entry (for example a
/// multiboot information structure).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSegment {
    /// The bytes.
    pub blob: Blob,
    /// Guest-physical address.
    pub gpa: u64,
}

/// Most extra guest segments.
pub const MAX_GUEST_SEGMENTS: usize = 8;

/// One ring-3 server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its name, for messages ("vmm-server").
    pub name: heapless::String<TASK_NAME_MAX>,
    /// Its ELF executable, linked inside the server image window.
    pub elf: Blob,
    /// What it may do.
    pub rights: Rights,
}

/// The guest's initial memory and registers: the stub copies `image` and
/// `segments` into guest RAM and starts the VCPU in `entry_mode` at
/// `entry_rip` with the given registers (all others zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// Guest RAM in MiB, from guest-physical 0; a multiple of 2.
    pub ram_mib: u32,
    /// Bytes copied into guest RAM at `load_gpa` before the first entry.
    pub image: Blob,
    /// Guest-physical load address of `image`.
    pub load_gpa: u64,
    /// Initial RIP.
    pub entry_rip: u64,
    /// Initial processor mode.
    pub entry_mode: EntryMode,
    /// Initial RAX (multiboot: the boot magic).
    pub entry_rax: u64,
    /// Initial RBX (multiboot: the information structure's address).
    pub entry_rbx: u64,
    /// Initial RSI (Linux 32-bit boot protocol: the `boot_params` address).
    pub entry_rsi: u64,
    /// More bytes to copy into guest RAM.
    pub segments: heapless::Vec<GuestSegment, MAX_GUEST_SEGMENTS>,
    /// Nested or shadow paging.
    pub mmu: MmuMode,
    /// The devices around the guest.
    pub board: Board,
    /// The host CPU the VM runs on (0: the boot CPU), where its tasks,
    /// channels and tables live (`splitvisor run --cpus`, `cpu` in `--config`).
    pub cpu: u8,
}

impl Guest {
    /// A flat 32-bit guest image at `load_gpa`, entered at `entry_rip`,
    /// all other registers zero, nested paging.
    pub fn flat32(ram_mib: u32, image: Blob, load_gpa: u64, entry_rip: u64) -> Self {
        Self {
            ram_mib,
            image,
            load_gpa,
            entry_rip,
            entry_mode: EntryMode::Flat32,
            entry_rax: 0,
            entry_rbx: 0,
            entry_rsi: 0,
            segments: heapless::Vec::new(),
            mmu: MmuMode::Nested,
            board: Board::Isa,
            cpu: 0,
        }
    }
}

/// The whole static description of one VM of a system image, or of its
/// tasks in no VM (no guest; after every VM's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The servers to start.
    pub tasks: heapless::Vec<Task, MAX_TASKS>,
    /// The guest to run; `None`: these are the tasks in no VM (a switch
    /// shared by the VMs), with no guest RAM, VCPU, ports or IRQs.
    pub guest: Option<Guest>,
    /// Call/reply channels between tasks.
    pub channels: heapless::Vec<Channel, MAX_CHANNELS>,
    /// The vmm-server's channel to the UART server as its number + 1 (0:
    /// none), copied into `stub_abi::layout::BootInfo::uart_channel`.
    pub uart_channel: u8,
    /// The guest-writes channels (`crate::guest_writes`), bit n for
    /// channel n, copied into `stub_abi::layout::BootInfo::guest_write_channels`:
    /// each is served by the task with the install right (the
    /// mmu-server).
    pub guest_write_channels: u16,
    /// The tasks in no VM only: their channels across VMs.
    pub links: heapless::Vec<Link, MAX_CHANNELS>,
}

impl Manifest {
    /// The task called `name`, if the image has one.
    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// Why the stub must refuse this manifest's rights, if it must: a port
    /// or IRQ the stub keeps, an exit class two tasks receive, exits
    /// without a VCPU, or a channel naming a task that does not exist.
    pub fn check_rights(&self) -> Result<(), &'static str> {
        let mut exits = ExitClasses::empty();
        for t in &self.tasks {
            let r = &t.rights;
            if r.ports.iter().any(PortRange::is_forbidden) {
                return Err("a task is granted a host I/O port the stub drives (console, PIT, 8259, debug-exit, Bochs, 0xe9) or an empty range");
            }
            if r.irqs & STUB_IRQS != 0 {
                return Err(
                    "a task is granted host IRQ 0 (the stub's timer) or 2 (the 8259 cascade)",
                );
            }
            if r.exits.intersects(exits) {
                return Err("two tasks receive the same class of exits");
            }
            if !r.exits.is_empty() && !r.vcpu {
                return Err("a task receives exits but has no VCPU right");
            }
            exits |= r.exits;
        }
        let n = self.tasks.len();
        let task = |i: u8| usize::from(i) < n;
        if !self.channels.iter().all(|c| {
            (task(c.client) && task(c.server))
                || (task(c.client) && c.server == FAR_END)
                || (c.client == FAR_END && task(c.server))
        }) {
            return Err("a channel names a task the image does not have");
        }
        let to_mmu = |(i, c): (usize, &Channel)| {
            self.guest_write_channels & (1 << i) == 0
                || self
                    .tasks
                    .get(usize::from(c.server))
                    .is_some_and(|t| t.rights.install)
        };
        let named =
            (0..16).all(|i| self.guest_write_channels & (1 << i) == 0 || i < self.channels.len());
        if !named || !self.channels.iter().enumerate().all(to_mmu) {
            return Err("a guest-writes channel does not exist or is not served by the mmu-server");
        }
        if self.guest.is_none() {
            let in_no_vm = |r: &Rights| {
                !r.vcpu
                    && !r.install
                    && r.exits.is_empty()
                    && r.guest_ram == GuestRam::None
                    && r.ports.is_empty()
                    && r.irqs == 0
            };
            if !self.tasks.iter().all(|t| in_no_vm(&t.rights)) {
                return Err("a task in no VM is granted guest RAM, a VCPU, the install right, host ports or IRQs");
            }
            if self.uart_channel != 0 || self.guest_write_channels != 0 {
                return Err("the tasks in no VM have a UART or guest-writes channel");
            }
        } else if !self.links.is_empty() {
            return Err("a VM's manifest has links (only the tasks in no VM have)");
        }
        Ok(())
    }
}

/// Why the stub must refuse the image's channels across VMs, if it must:
/// `vms` are the channel tables of the VMs, `system` the tasks in no VM.
/// Every [`FAR_END`] of either side is joined by exactly one [`Link`], and
/// a link joins a channel whose end in no VM is the opposite of its end
/// in the VM (one side calls, the other serves).
pub fn check_links(
    vms: &[heapless::Vec<Channel, MAX_CHANNELS>],
    system: Option<&Manifest>,
) -> Result<(), &'static str> {
    if vms.len() > MAX_VMS {
        return Err("the image holds more VMs than the stub runs (4)");
    }
    let far = |c: &Channel| c.client == FAR_END || c.server == FAR_END;
    let (no_links, no_channels) = (heapless::Vec::new(), heapless::Vec::new());
    let (links, sys) = system.map_or((&no_links, &no_channels), |m| (&m.links, &m.channels));
    let mut joined = [0u16; MAX_VMS];
    let mut sys_joined = 0u16;
    for l in links {
        let vm = vms
            .get(usize::from(l.vm))
            .ok_or("a link names a VM the image does not have")?;
        let (Some(here), Some(there)) = (
            sys.get(usize::from(l.channel)),
            vm.get(usize::from(l.vm_channel)),
        ) else {
            return Err("a link names a channel that does not exist");
        };
        let opposite =
            (here.client == FAR_END && there.server == FAR_END && there.client != FAR_END)
                || (here.server == FAR_END && there.client == FAR_END && there.server != FAR_END);
        if !opposite {
            return Err("a link joins two clients or two servers of a channel");
        }
        let (bit, sys_bit) = (1u16 << l.vm_channel, 1u16 << l.channel);
        if joined[usize::from(l.vm)] & bit != 0 || sys_joined & sys_bit != 0 {
            return Err("two links join the same channel");
        }
        joined[usize::from(l.vm)] |= bit;
        sys_joined |= sys_bit;
    }
    let all_joined = |chs: &heapless::Vec<Channel, MAX_CHANNELS>, mask: u16| {
        chs.iter()
            .enumerate()
            .all(|(n, c)| !far(c) || mask & (1 << n) != 0)
    };
    if !all_joined(sys, sys_joined) || !vms.iter().zip(joined).all(|(v, m)| all_joined(v, m)) {
        return Err("a channel has an end in another VM that no link joins");
    }
    Ok(())
}

/// The channels across VMs of an image's manifest area (`bytes`: one
/// postcard [`Manifest`] per VM, back to back), checked before anything
/// is built: the tasks in no VM come after every VM and have no guest or
/// host rights, and [`check_links`] holds.
pub fn check_image_links(mut bytes: &[u8]) -> Result<(), &'static str> {
    let mut vms: heapless::Vec<_, MAX_VMS> = heapless::Vec::new();
    while !bytes.is_empty() {
        let (m, rest) = postcard::take_from_bytes::<Manifest>(bytes)
            .map_err(|_| "the manifest does not decode")?;
        bytes = rest;
        if m.guest.is_none() {
            if !rest.is_empty() {
                return Err("the tasks in no VM do not come after every VM");
            }
            m.check_rights()?;
            return check_links(&vms, Some(&m));
        }
        vms.push(m.channels)
            .map_err(|_| "the image holds more VMs than the stub runs (4)")?;
    }
    check_links(&vms, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn payload_header_layout_is_pinned() {
        assert_eq!(size_of::<PayloadHeader>(), 16);
        assert_eq!(offset_of!(PayloadHeader, magic), 0);
        assert_eq!(offset_of!(PayloadHeader, abi_version), 8);
        assert_eq!(offset_of!(PayloadHeader, manifest_len), 12);
    }

    fn task(name: &str, rights: Rights) -> Task {
        Task {
            name: heapless::String::try_from(name).unwrap(),
            elf: Blob {
                offset: 4096,
                len: 1000,
            },
            rights,
        }
    }

    fn device_rights() -> Rights {
        Rights {
            guest_ram: GuestRam::ReadWrite,
            ports: heapless::Vec::from_slice(&[
                PortRange {
                    first: 0x1f0,
                    last: 0x1f7,
                },
                PortRange {
                    first: 0x3f6,
                    last: 0x3f6,
                },
            ])
            .unwrap(),
            irqs: 1 << 14,
            console: true,
            ..Rights::default()
        }
    }

    #[test]
    fn manifest_round_trips_through_postcard() {
        let mut tasks = heapless::Vec::new();
        let vmm = Rights {
            vcpu: true,
            exits: ExitClasses::all() - ExitClasses::SHADOW_MMU,
            guest_ram: GuestRam::ReadWrite,
            console: true,
            ..Rights::default()
        };
        tasks.push(task("vmm-server", vmm.clone())).unwrap();
        tasks.push(task("disk", device_rights())).unwrap();
        let m = Manifest {
            tasks,
            channels: heapless::Vec::from_slice(&[Channel {
                client: 0,
                server: 1,
            }])
            .unwrap(),
            uart_channel: 0,
            guest_write_channels: 0,
            links: heapless::Vec::new(),
            guest: Some(Guest {
                entry_mode: EntryMode::Real16,
                mmu: MmuMode::Shadow,
                ..Guest::flat32(
                    16,
                    Blob {
                        offset: 8192,
                        len: 64,
                    },
                    0x10_0000,
                    0x10_0000,
                )
            }),
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert!(bytes.len() <= MANIFEST_MAX);
        let back: Manifest = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.task("vmm-server").unwrap().elf.len, 1000);
        assert_eq!(back.task("vmm-server").unwrap().rights, vmm);
        assert_eq!(back.task("disk").unwrap().rights.irqs, 1 << 14);
        assert_eq!(back.check_rights(), Ok(()));
    }

    /// MAX_TASKS tasks with long names and every right, MAX_CHANNELS
    /// channels and every guest segment still fit in MANIFEST_MAX.
    #[test]
    fn the_largest_manifest_fits() {
        let mut rights = device_rights();
        rights
            .ports
            .push(PortRange {
                first: 0xfff0,
                last: 0xffff,
            })
            .unwrap();
        rights
            .ports
            .push(PortRange {
                first: 0xeee0,
                last: 0xeeef,
            })
            .unwrap();
        rights.irqs = u16::MAX;
        rights.exits = ExitClasses::all();
        let mut m = Manifest {
            tasks: heapless::Vec::new(),
            channels: heapless::Vec::new(),
            uart_channel: 255,
            guest_write_channels: 0,
            links: heapless::Vec::new(),
            guest: Some(Guest::flat32(
                512,
                Blob {
                    offset: u32::MAX,
                    len: u32::MAX,
                },
                u64::MAX,
                u64::MAX,
            )),
        };
        for n in 0..MAX_TASKS {
            let mut t = task("0123456789abcdef", rights.clone());
            t.elf = Blob {
                offset: u32::MAX - n as u32,
                len: u32::MAX,
            };
            m.tasks.push(t).unwrap();
        }
        for n in 0..MAX_CHANNELS {
            m.channels
                .push(Channel {
                    client: n as u8,
                    server: 255,
                })
                .unwrap();
        }
        for _ in 0..MAX_GUEST_SEGMENTS {
            m.guest
                .as_mut()
                .unwrap()
                .segments
                .push(GuestSegment {
                    blob: Blob {
                        offset: u32::MAX,
                        len: u32::MAX,
                    },
                    gpa: u64::MAX,
                })
                .unwrap();
        }
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert!(bytes.len() <= MANIFEST_MAX, "{} bytes", bytes.len());
    }

    #[test]
    fn rights_the_stub_keeps_are_refused() {
        let m = |rights: Rights| Manifest {
            tasks: heapless::Vec::from_slice(&[task("x", rights)]).unwrap(),
            channels: heapless::Vec::new(),
            uart_channel: 0,
            guest_write_channels: 0,
            links: heapless::Vec::new(),
            guest: Some(Guest::flat32(2, Blob::default(), 0, 0)),
        };
        assert_eq!(m(device_rights()).check_rights(), Ok(()));
        for (first, last) in [
            (0x3f8, 0x3f8),
            (0x3f0, 0x3f8),
            (0x40, 0x40),
            (0x21, 0x30),
            (0xa1, 0xa1),
            (0xe9, 0xe9),
            (0xf4, 0xf4),
            (0x8900, 0x8900),
            (0, 0xffff),
            (0x300, 0x2ff),
        ] {
            let mut r = device_rights();
            r.ports.push(PortRange { first, last }).unwrap();
            assert!(m(r).check_rights().is_err(), "{first:#x}..={last:#x}");
        }
        for line in [0, 2] {
            let r = Rights {
                irqs: 1 << line,
                ..device_rights()
            };
            assert!(m(r).check_rights().is_err());
        }
        let r = Rights {
            exits: ExitClasses::HLT,
            ..device_rights()
        };
        assert!(m(r).check_rights().is_err(), "exits without a VCPU");
        let mut two = m(Rights {
            vcpu: true,
            exits: ExitClasses::HLT,
            ..Rights::default()
        });
        two.tasks.push(two.tasks[0].clone()).unwrap();
        assert!(two.check_rights().is_err(), "one class, two tasks");
        let mut bad_channel = m(device_rights());
        bad_channel
            .channels
            .push(Channel {
                client: 0,
                server: 1,
            })
            .unwrap();
        assert!(bad_channel.check_rights().is_err());
    }

    #[test]
    fn truncated_manifest_is_an_error_not_a_panic() {
        let m = Manifest {
            tasks: heapless::Vec::from_slice(&[task("t", device_rights())]).unwrap(),
            channels: heapless::Vec::new(),
            uart_channel: 0,
            guest_write_channels: 0,
            links: heapless::Vec::new(),
            guest: Some(Guest::flat32(2, Blob::default(), 0, 0)),
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        for n in 0..bytes.len() {
            assert!(postcard::from_bytes::<Manifest>(&bytes[..n]).is_err());
        }
    }

    fn channels(ends: &[(u8, u8)]) -> heapless::Vec<Channel, MAX_CHANNELS> {
        ends.iter()
            .map(|&(client, server)| Channel { client, server })
            .collect()
    }

    /// Two VMs whose channel 1 (virtio-net, task 3, calls) reaches a
    /// switch in no VM, which calls VM 0's nic-driver (task 2) on its
    /// channel 2.
    fn two_vms_and_a_switch() -> ([heapless::Vec<Channel, MAX_CHANNELS>; 2], Manifest) {
        let vm0 = channels(&[(0, 1), (3, FAR_END), (FAR_END, 2)]);
        let vm1 = channels(&[(0, 1), (3, FAR_END)]);
        let switch = Manifest {
            tasks: heapless::Vec::from_slice(&[task(
                "switch",
                Rights {
                    console: true,
                    ..Rights::default()
                },
            )])
            .unwrap(),
            channels: channels(&[(FAR_END, 0), (FAR_END, 0), (0, FAR_END)]),
            uart_channel: 0,
            guest_write_channels: 0,
            links: heapless::Vec::from_slice(&[
                Link {
                    channel: 0,
                    vm: 0,
                    vm_channel: 1,
                },
                Link {
                    channel: 1,
                    vm: 1,
                    vm_channel: 1,
                },
                Link {
                    channel: 2,
                    vm: 0,
                    vm_channel: 2,
                },
            ])
            .unwrap(),
            guest: None,
        };
        ([vm0, vm1], switch)
    }

    #[test]
    fn links_join_opposite_ends_once_each() {
        let (vms, sys) = two_vms_and_a_switch();
        assert_eq!(sys.check_rights(), Ok(()));
        assert_eq!(check_links(&vms, Some(&sys)), Ok(()));
        // No far end without its link, on either side.
        assert!(check_links(&vms, None).is_err(), "VM ends with no system");
        let mut one = sys.clone();
        one.links.pop();
        assert!(check_links(&vms, Some(&one)).is_err(), "an unjoined end");
        // A link to a VM, or a channel, that does not exist.
        for l in [
            Link {
                channel: 2,
                vm: 2,
                vm_channel: 2,
            },
            Link {
                channel: 2,
                vm: 0,
                vm_channel: 9,
            },
            Link {
                channel: 9,
                vm: 0,
                vm_channel: 2,
            },
        ] {
            let mut bad = sys.clone();
            bad.links[2] = l;
            assert!(check_links(&vms, Some(&bad)).is_err(), "{l:?}");
        }
        // Two clients (the switch's channel 0 joined to VM 0's channel
        // 2, whose far end is its client too), two links on one channel.
        let mut bad = sys.clone();
        bad.links[0] = Link {
            channel: 0,
            vm: 0,
            vm_channel: 2,
        };
        assert!(check_links(&vms, Some(&bad)).is_err(), "same ends");
        let mut bad = sys.clone();
        bad.links[1] = Link {
            channel: 1,
            vm: 0,
            vm_channel: 1,
        };
        assert!(check_links(&vms, Some(&bad)).is_err(), "one channel twice");
        // A channel with both ends far joins nothing.
        let mut both = vms.clone();
        both[1][1] = Channel {
            client: FAR_END,
            server: FAR_END,
        };
        assert!(check_links(&both, Some(&sys)).is_err(), "both ends far");
        let mut m = sys.clone();
        m.channels[0] = Channel {
            client: FAR_END,
            server: FAR_END,
        };
        assert!(m.check_rights().is_err());
    }

    #[test]
    fn a_task_in_no_vm_has_no_guest_or_host_rights() {
        let (_, sys) = two_vms_and_a_switch();
        let granted = [
            Rights {
                vcpu: true,
                ..Rights::default()
            },
            Rights {
                install: true,
                ..Rights::default()
            },
            Rights {
                guest_ram: GuestRam::ReadOnly,
                ..Rights::default()
            },
            Rights {
                irqs: 1 << 5,
                ..Rights::default()
            },
            Rights {
                ports: heapless::Vec::from_slice(&[PortRange {
                    first: 0x300,
                    last: 0x31f,
                }])
                .unwrap(),
                ..Rights::default()
            },
        ];
        for r in granted {
            let mut bad = sys.clone();
            bad.tasks[0].rights = r.clone();
            let e = bad.check_rights().unwrap_err();
            assert!(e.contains("no VM"), "{r:?}: {e}");
        }
        let mut bad = sys.clone();
        bad.guest_write_channels = 1;
        assert!(bad.check_rights().is_err());
        // Links only in the manifest of the tasks in no VM.
        let mut vm = bad.clone();
        vm.guest_write_channels = 0;
        vm.guest = Some(Guest::flat32(2, Blob::default(), 0, 0));
        assert!(vm.check_rights().unwrap_err().contains("links"));
    }

    #[test]
    fn the_tasks_in_no_vm_come_last_and_keep_their_rights() {
        let (vms, sys) = two_vms_and_a_switch();
        let vm = |channels| Manifest {
            tasks: heapless::Vec::from_slice(&[task("t", device_rights())]).unwrap(),
            channels,
            uart_channel: 0,
            guest_write_channels: 0,
            links: heapless::Vec::new(),
            guest: Some(Guest::flat32(2, Blob::default(), 0, 0)),
        };
        let area = |ms: &[&Manifest]| {
            let mut out = [0u8; 4 * MANIFEST_MAX];
            let mut at = 0;
            for m in ms {
                at += postcard::to_slice(m, &mut out[at..]).unwrap().len();
            }
            (out, at)
        };
        let (vm0, vm1) = (vm(vms[0].clone()), vm(vms[1].clone()));
        let (bytes, n) = area(&[&vm0, &vm1, &sys]);
        assert_eq!(check_image_links(&bytes[..n]), Ok(()));
        let (bytes, n) = area(&[&vm0, &sys, &vm1]);
        assert!(check_image_links(&bytes[..n]).is_err(), "not last");
        let (bytes, n) = area(&[&vm0, &vm1]);
        assert!(check_image_links(&bytes[..n]).is_err(), "no tasks in no VM");
        let mut ram = sys.clone();
        ram.tasks[0].rights.guest_ram = GuestRam::ReadWrite;
        let (bytes, n) = area(&[&vm0, &vm1, &ram]);
        assert!(check_image_links(&bytes[..n]).is_err(), "guest RAM");
        assert!(check_image_links(&bytes[..n - 1]).is_err(), "truncated");
        // Images without channels across VMs pass as before.
        let plain = vm(channels(&[(0, 0)]));
        let (bytes, n) = area(&[&plain, &plain]);
        assert_eq!(check_image_links(&bytes[..n]), Ok(()));
    }
}
