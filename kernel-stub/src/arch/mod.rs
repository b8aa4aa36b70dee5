//! The virtualization extensions the stub can enter a guest with.
//! Each back end turns its exits into the same `ipc_proto::ExitRecord`.

pub mod svm;

use ipc_proto::manifest::EntryMode;

/// Where and how the guest starts.
pub struct Entry {
    pub mode: EntryMode,
    pub rip: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
}

/// The guest's RAM: guest-physical `[0, bytes)` at host-physical `hpa`.
#[derive(Clone, Copy)]
pub struct GuestMemory {
    pub hpa: u64,
    pub bytes: u64,
}

/// How the guest's memory is translated.
#[derive(Clone, Copy)]
pub enum Paging {
    /// By nested paging (NPT, EPT) over the guest's RAM; the back end builds
    /// the table in its own format.
    Nested(GuestMemory),
    /// Through shadow tables the mmu-server builds: the guest's CR0, CR3
    /// and CR4 accesses, its page faults and INVLPG exit.
    Shadow,
}
