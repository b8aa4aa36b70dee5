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
}

/// One ring-3 server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its role.
    pub kind: TaskKind,
    /// Its ELF executable, linked inside the server image window.
    pub elf: Blob,
}

/// The guest's initial memory and registers.
///
/// The VCPU starts in flat 32-bit protected mode with paging off (CS and
/// the data segments: base 0, limit 4 GiB) -- the state multiboot and the
/// 32-bit Linux boot protocol both hand over -- at `entry_rip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// Guest RAM in MiB, from guest-physical 0; a multiple of 2.
    pub ram_mib: u32,
    /// Bytes copied into guest RAM at `load_gpa` before the first entry.
    pub image: Blob,
    /// Guest-physical load address of `image`.
    pub load_gpa: u64,
    /// Initial RIP.
    pub entry_rip: u64,
}

/// The whole static description of a system image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The servers to start.
    pub tasks: heapless::Vec<Task, MAX_TASKS>,
    /// The guest to run.
    pub guest: Guest,
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
            guest: Guest {
                ram_mib: 16,
                image: Blob {
                    offset: 8192,
                    len: 64,
                },
                load_gpa: 0x10_0000,
                entry_rip: 0x10_0000,
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
            guest: Guest {
                ram_mib: 2,
                image: Blob::default(),
                load_gpa: 0,
                entry_rip: 0,
            },
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        for n in 0..bytes.len() {
            assert!(postcard::from_bytes::<Manifest>(&bytes[..n]).is_err());
        }
    }
}
