//! The `splitvisor` command line, as a library: the run logic (boot an
//! image in QEMU, or its GRUB ISO in Bochs, and read the stub's verdict)
//! and the privileged-code count,
//! testable without a terminal. `src/main.rs` only parses arguments.
#![deny(missing_docs)]

pub mod accel;
pub mod attack;
pub mod bochs;
pub mod debian_guests;
pub mod disk;
pub mod e2e;
pub mod linux;
pub mod linux_modules;
pub mod linux_virtio;
pub mod loc;
pub mod nic;
pub mod progress;
pub mod run;
pub mod sel4;
pub mod tracing;
pub mod virtio;
pub mod vm_logs;
pub mod vms;

pub use run::{
    Arch, EmulatorKind, RunOptions, DEFAULT_CPU, DEFAULT_EMULATOR, EXIT_CANNOT_RUN, EXIT_EMULATOR,
    EXIT_TIMEOUT, EXIT_VM_FAILED,
};

/// Exit statuses of `splitvisor`, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit status of `splitvisor run`:
  2    bad arguments, or a --disk image that cannot be used (one
       sentence says why, before anything is built or booted)
  N    the guest stopped with status N (it wrote N to port 0xF4);
       note that a guest may itself choose 101, 102, 103 or 124;
       a guest that resets the machine (`[vmm] the guest reset the
       machine`: Linux's reboot, or a panic with panic=-1) stops with 0,
       as QEMU's -no-reboot does: read the console to tell them apart
  101  the VM failed (the stub's `[stub] vm failed: REASON`)
  102  the stub cannot run here (`[stub] cannot run: REASON`, e.g. no SVM)
  103  the emulator is missing or failed to start, the image could not be
       built, or the emulator ended without the stub's final line
  124  timed out (--timeout); the emulator was killed
Other commands exit 0 on success and 1 on failure; bad arguments exit 2.";
