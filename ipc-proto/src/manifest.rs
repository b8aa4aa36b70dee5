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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The task that calls.
    pub client: u8,
    /// The task that serves.
    pub server: u8,
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

/// The whole static description of a system image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The servers to start.
    pub tasks: heapless::Vec<Task, MAX_TASKS>,
    /// The guest to run.
    pub guest: Guest,
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
        if self
            .channels
            .iter()
            .any(|c| usize::from(c.client) >= n || usize::from(c.server) >= n)
        {
            return Err("a channel names a task the image does not have");
        }
        let to_mmu = |(i, c): (usize, &Channel)| {
            self.guest_write_channels & (1 << i) == 0
                || self.tasks[usize::from(c.server)].rights.install
        };
        let named =
            (0..16).all(|i| self.guest_write_channels & (1 << i) == 0 || i < self.channels.len());
        if !named || !self.channels.iter().enumerate().all(to_mmu) {
            return Err("a guest-writes channel does not exist or is not served by the mmu-server");
        }
        Ok(())
    }
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
            guest: Guest {
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
            },
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
            guest: Guest::flat32(
                512,
                Blob {
                    offset: u32::MAX,
                    len: u32::MAX,
                },
                u64::MAX,
                u64::MAX,
            ),
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
            guest: Guest::flat32(2, Blob::default(), 0, 0),
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
            guest: Guest::flat32(2, Blob::default(), 0, 0),
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        for n in 0..bytes.len() {
            assert!(postcard::from_bytes::<Manifest>(&bytes[..n]).is_err());
        }
    }
}
