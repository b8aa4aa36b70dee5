//! The splitvisor vmm-server as a library: VM-exit decoding, instruction
//! emulation, the PC's devices, the port and MMIO routers, the exit handler
//! with its virtual clock and interrupt injection, and the server loop.
//!
//! Nothing here touches the machine: the ring-3 binary (`src/main.rs`)
//! supplies the stub's system calls through [`server::Stub`],
//! [`console::HostWrite`] and [`vmm::Host`], and guest RAM through
//! [`emulate::GuestMemory`]; the same code runs in `cargo test` against
//! scripted exits.
//!
//! ```
//! use core::cell::RefCell;
//! use vmm_server::board::Board;
//! use vmm_server::console::{HostConsole, HostWrite};
//! use vmm_server::devices::{debug_exit::{self, DebugExit}, pit::{self, Pit}, uart16550::{self, Uart16550}};
//! use vmm_server::emulate::Ram;
//! use vmm_server::router::Router;
//! use vmm_server::vmm::{Action, NullHost, Vmm};
//!
//! struct Discard;
//! impl HostWrite for Discard {
//!     fn write_host(&mut self, _bytes: &[u8]) {}
//! }
//!
//! // What the devices share: the virtual clock and the IRQ lines.
//! let board = Board::new();
//! let mut bytes = vec![0u8; 1 << 20];
//! let mut ram = Ram::new(&mut bytes);
//! let mut host = NullHost;
//! let console = RefCell::new(HostConsole::new(Discard, true));
//! let mut uart = Uart16550::new(&console).with_irq(board.irq.pin(4));
//! let mut timer = Pit::new(&board.clock, Some(board.irq.pin(0)));
//! let mut dbg = DebugExit::new();
//! let mut router = Router::new();
//! router.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart).unwrap();
//! router.register_ranges(&pit::RANGES, &mut timer).unwrap();
//! router.register(debug_exit::PORT, debug_exit::LEN, &mut dbg).unwrap();
//! let mut vmm = Vmm::new(router, &board, &mut ram, &mut host);
//! // A HLT with interrupts off ends the VM, as a failure: nothing can wake
//! // the guest, and only the guest says it passed (the debug-exit port).
//! let mut rec = ipc_proto::ExitRecord {
//!     abi_version: ipc_proto::ABI_VERSION,
//!     arch: ipc_proto::VcpuArch::Svm as u32,
//!     exit_code: ipc_proto::vcpu::svm_exit::HLT,
//!     ..Default::default()
//! };
//! rec.regs.rflags = 0x2;
//! assert!(matches!(vmm.handle(&rec), Action::Fail(_)));
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod board;
pub mod boards;
pub mod console;
pub mod cpuid;
pub mod devices;
pub mod emulate;
pub mod exit;
pub mod history;
pub mod irqchip;
pub mod mmio;
pub mod msr;
pub mod router;
pub mod server;
pub mod trace;
pub mod vcpu;
pub mod vmm;

pub use console::{ConsoleSink, HostConsole, HostWrite};
pub use devices::{PortDevice, WriteOutcome};
pub use exit::{Exit, IoAccess, IoDirection, IoSize};
pub use router::{Router, RouterError, UnknownPortCounts};
pub use server::{run, Ending, Stub};
pub use vmm::{Action, FailKind, FailReason, Host, Vmm};
