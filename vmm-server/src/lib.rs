//! The splitvisor vmm-server as a library: VM-exit decoding, port-I/O
//! device models, the port router, the exit handler and the server loop.
//!
//! Nothing here touches the machine: the ring-3 binary (`src/main.rs`)
//! supplies the stub's system calls through [`server::Stub`] and
//! [`console::HostWrite`], and the same code runs in `cargo test` against
//! scripted exits.
//!
//! ```
//! use core::cell::RefCell;
//! use vmm_server::console::{HostConsole, HostWrite};
//! use vmm_server::devices::{debug_exit::{self, DebugExit}, uart16550::{self, Uart16550}};
//! use vmm_server::router::Router;
//! use vmm_server::vmm::{Action, Vmm};
//!
//! struct Discard;
//! impl HostWrite for Discard {
//!     fn write_host(&mut self, _bytes: &[u8]) {}
//! }
//!
//! let console = RefCell::new(HostConsole::new(Discard, true));
//! let mut uart = Uart16550::new(&console);
//! let mut dbg = DebugExit::new();
//! let mut router = Router::new();
//! router.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart).unwrap();
//! router.register(debug_exit::PORT, debug_exit::LEN, &mut dbg).unwrap();
//! let mut vmm = Vmm::new(router);
//! // A HLT with interrupts off ends the VM cleanly.
//! let mut rec = ipc_proto::ExitRecord {
//!     abi_version: ipc_proto::ABI_VERSION,
//!     arch: ipc_proto::VcpuArch::Svm as u32,
//!     exit_code: ipc_proto::vcpu::svm_exit::HLT,
//!     ..Default::default()
//! };
//! rec.regs.rflags = 0x2;
//! assert_eq!(vmm.handle(&rec), Action::Stop { status: 0 });
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod console;
pub mod devices;
pub mod exit;
pub mod router;
pub mod server;
pub mod vmm;

pub use console::{ConsoleSink, HostConsole, HostWrite};
pub use devices::{PortDevice, WriteOutcome};
pub use exit::{Exit, IoAccess, IoDirection, IoSize};
pub use router::{Router, RouterError, UnknownPortCounts};
pub use server::{run, Ending, Stub};
pub use vmm::{Action, FailKind, FailReason, Vmm};
