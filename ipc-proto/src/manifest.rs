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

/// Most tasks an image may hold.
pub const MAX_TASKS: usize = 8;

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

/// What a task is for; decides the rights the stub gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Handles VM exits: may run the VCPU; guest RAM is mapped into it.
    VmmServer,
    /// Builds the VM's page tables, in every MMU mode: installs shadow
    /// entries and handles the page-fault, CR, INVLPG and EFER exits of a
    /// shadowed guest, or installs the nested tables (NPT, EPT) and names
    /// their root; guest RAM is mapped into it. Every image has one.
    MmuServer,
    /// The 16550 UART as a server of its own, reached over a channel.
    UartServer,
}

/// Most channels an image may have.
pub const MAX_CHANNELS: usize = 8;

/// A call/reply channel between two tasks; its number is its index in
/// [`Manifest::channels`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The task that calls.
    pub client: TaskKind,
    /// The task that serves.
    pub server: TaskKind,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its role.
    pub kind: TaskKind,
    /// Its ELF executable, linked inside the server image window.
    pub elf: Blob,
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
}

impl Manifest {
    /// The task of a kind, if the image has one.
    pub fn task(&self, kind: TaskKind) -> Option<&Task> {
        self.tasks.iter().find(|t| t.kind == kind)
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

    #[test]
    fn manifest_round_trips_through_postcard() {
        let mut tasks = heapless::Vec::new();
        tasks
            .push(Task {
                kind: TaskKind::VmmServer,
                elf: Blob {
                    offset: 4096,
                    len: 1000,
                },
            })
            .unwrap();
        let m = Manifest {
            tasks,
            channels: heapless::Vec::from_slice(&[Channel {
                client: TaskKind::VmmServer,
                server: TaskKind::UartServer,
            }])
            .unwrap(),
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
        assert_eq!(back.task(TaskKind::VmmServer).unwrap().elf.len, 1000);
    }

    #[test]
    fn truncated_manifest_is_an_error_not_a_panic() {
        let m = Manifest {
            tasks: heapless::Vec::new(),
            channels: heapless::Vec::new(),
            guest: Guest::flat32(2, Blob::default(), 0, 0),
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        for n in 0..bytes.len() {
            assert!(postcard::from_bytes::<Manifest>(&bytes[..n]).is_err());
        }
    }
}
