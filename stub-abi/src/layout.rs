//! The fixed virtual address layout of every ring-3 server's address space.
//!
//! The stub builds each server's page tables from this layout; servers link
//! at [`SERVER_IMAGE_BASE`] and find their shared pages at the addresses
//! below. Everything lives in the second gigabyte and above, so the stub's
//! own identity map of the first gigabyte (supervisor-only) never overlaps.

pub use ipc_proto::PAGE_SIZE;

/// Servers are linked (and their ELF segments loaded) inside
/// `[SERVER_IMAGE_BASE, SERVER_IMAGE_END)`.
pub const SERVER_IMAGE_BASE: u64 = 0x4000_0000;
/// End of the server image window.
pub const SERVER_IMAGE_END: u64 = 0x5000_0000;

/// The server's stack: `STACK_SIZE` bytes just below `STACK_TOP`; `rsp`
/// starts at `STACK_TOP`.
pub const STACK_TOP: u64 = 0x5f00_0000;
/// Size of the server's stack.
pub const STACK_SIZE: u64 = 64 * 1024;

/// The VCPU page ([`ipc_proto::VcpuPage`]), read-write, shared with the stub.
pub const VCPU_PAGE: u64 = 0x6000_0000;
/// The boot-info page ([`BootInfo`]), read-only.
pub const BOOT_INFO_PAGE: u64 = 0x6000_1000;

/// The install page ([`ipc_proto::mmu::InstallPage`]) of the mmu-server, read-write.
pub const INSTALL_PAGE: u64 = 0x6000_2000;

/// Channel `n`'s shared message page is at `CHANNEL_PAGE_BASE + n * PAGE_SIZE`
/// in both its client and its server; the message layout is the pair's business.
pub const CHANNEL_PAGE_BASE: u64 = 0x6010_0000;

/// Guest-physical address 0 of the VM appears here in the vmm-server
/// (read-write, zero-copy): the server reads and writes guest memory in place.
pub const GUEST_RAM_WINDOW: u64 = 0x8000_0000;

/// What the stub tells a server about its world, at [`BOOT_INFO_PAGE`].
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
#[repr(C)]
pub struct BootInfo {
    /// [`ipc_proto::ABI_VERSION`] of the stub.
    pub abi_version: u32,
    /// Which virtualization extension the stub uses ([`ipc_proto::VcpuArch`]).
    pub arch: u32,
    /// Bytes of guest RAM, starting at guest-physical 0.
    pub guest_ram_bytes: u64,
    /// Where guest-physical 0 is mapped in this server ([`GUEST_RAM_WINDOW`]).
    pub guest_ram_window: u64,
    /// Frequency of the time-stamp counter in Hz, as the stub measured it
    /// against the PIT at boot; ring 3 may read the TSC with RDTSC. 0 when
    /// the measurement failed.
    pub tsc_hz: u64,
    /// The guest's CR0 at its first entry (0x11 in flat protected mode,
    /// 0x10 in real mode): what a shadow MMU starts from.
    pub guest_cr0: u64,
    /// How guest memory is virtualized: a `manifest::MmuMode` as 0 (nested),
    /// 1 (shadow) or 2 (shadow, 2006 baseline).
    pub mmu_mode: u64,
    /// The channel to the UART server as its number + 1 (0: the image has
    /// no UART server; the vmm-server then emulates COM1 itself). Appended
    /// after the fields of ABI version 2: an older stub leaves it zero.
    pub uart_channel: u64,
    /// 1 when the nested tables may hold 2 MiB leaves (always on SVM; on
    /// VMX when IA32_VMX_EPT_VPID_CAP says so), else 0. Appended in ABI
    /// version 4.
    pub nested_large_pages: u64,
    /// The devices the vmm-server emulates: a `manifest::Board` as 0 (ISA)
    /// or 1 (PC). Appended in ABI version 8.
    pub board: u64,
    /// The guest-writes channels (`ipc_proto::guest_writes`), bit n for
    /// channel n: copied from `manifest::Manifest::guest_write_channels`.
    /// Appended in ABI version 13.
    pub guest_write_channels: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn boot_info_layout_is_pinned() {
        assert_eq!(size_of::<BootInfo>(), 80);
        assert_eq!(offset_of!(BootInfo, guest_write_channels), 72);
        assert_eq!(offset_of!(BootInfo, board), 64);
        assert_eq!(offset_of!(BootInfo, nested_large_pages), 56);
        assert_eq!(offset_of!(BootInfo, uart_channel), 48);
        assert_eq!(offset_of!(BootInfo, mmu_mode), 40);
        assert_eq!(offset_of!(BootInfo, guest_cr0), 32);
        assert_eq!(offset_of!(BootInfo, abi_version), 0);
        assert_eq!(offset_of!(BootInfo, arch), 4);
        assert_eq!(offset_of!(BootInfo, guest_ram_bytes), 8);
        assert_eq!(offset_of!(BootInfo, guest_ram_window), 16);
        assert_eq!(offset_of!(BootInfo, tsc_hz), 24);
    }

    #[test]
    fn regions_are_page_aligned_and_disjoint() {
        for a in [
            SERVER_IMAGE_BASE,
            SERVER_IMAGE_END,
            STACK_TOP,
            STACK_SIZE,
            VCPU_PAGE,
            BOOT_INFO_PAGE,
            GUEST_RAM_WINDOW,
        ] {
            assert_eq!(a % PAGE_SIZE, 0, "{a:#x}");
        }
        // Constants: checked when the test compiles.
        const {
            assert!(SERVER_IMAGE_END <= STACK_TOP - STACK_SIZE);
            assert!(STACK_TOP <= VCPU_PAGE);
            assert!(BOOT_INFO_PAGE < INSTALL_PAGE && INSTALL_PAGE < CHANNEL_PAGE_BASE);
            let channels_end =
                CHANNEL_PAGE_BASE + ipc_proto::manifest::MAX_CHANNELS as u64 * PAGE_SIZE;
            assert!(channels_end <= GUEST_RAM_WINDOW);
            // Above the stub's supervisor identity map of the first GiB.
            assert!(SERVER_IMAGE_BASE >= 1 << 30);
        }
    }
}
