//! The exit handler: one [`ExitRecord`] in, one [`Action`] out.

use core::fmt;

use ipc_proto::vcpu::svm_exit;
use ipc_proto::{EventInjection, ExitRecord, GuestRegs, Resume, ResumeFlags, VcpuArch};

use crate::devices::WriteOutcome;
use crate::exit::{exit_name, Exit, IoAccess, IoDirection, IoSize};
use crate::router::{Router, UnknownPortCounts};

/// What the server does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Re-enter the guest with this resume.
    Resume(Resume),
    /// The guest ended cleanly with this status.
    Stop {
        /// Exit status, 0 for success.
        status: u8,
    },
    /// The VM cannot go on.
    Fail(FailReason),
}

/// Why the VM cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// An exit the server does not handle.
    Unhandled,
    /// The guest triple-faulted.
    TripleFault,
    /// The CPU refused to enter the guest.
    EntryFailed,
    /// INS/OUTS (with or without REP): needs the instruction emulator.
    StringIo,
    /// HLT with interrupts enabled, but no device can raise one yet.
    HaltedWithInterruptsEnabled,
    /// The exit did not give the next instruction's address.
    NoNextRip,
    /// The record was written by a stub of another ABI version.
    AbiMismatch {
        /// The record's `abi_version`.
        record: u32,
    },
}

/// A failure, with what is needed to explain it: the decoded exit, its raw
/// code and arch, and the guest RIP of the exiting instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailReason {
    /// What went wrong.
    pub kind: FailKind,
    /// The decoded exit.
    pub exit: Exit,
    /// The record's raw `arch`.
    pub arch: u32,
    /// The record's raw exit code.
    pub code: u64,
    /// The guest RIP at the exit.
    pub rip: u64,
}

impl FailReason {
    fn new(kind: FailKind, exit: Exit, rec: &ExitRecord) -> Self {
        Self {
            kind,
            exit,
            arch: rec.arch,
            code: rec.exit_code,
            rip: rec.regs.rip,
        }
    }
}

impl fmt::Display for FailReason {
    /// One sentence, e.g. `unhandled exit cpuid (code 0x72) at rip=0x100023`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = exit_name(self.arch, self.code);
        let (code, rip) = (self.code, self.rip);
        match self.kind {
            FailKind::Unhandled => {
                write!(f, "unhandled exit {name} (code {code:#x}) at rip={rip:#x}")?;
                match self.exit {
                    Exit::Msr { write } => {
                        f.write_str(if write { ": wrmsr" } else { ": rdmsr" })
                    }
                    Exit::NestedPageFault { gpa, error_code } => {
                        write!(f, ": gpa={gpa:#x} error_code={error_code:#x}")
                    }
                    _ => Ok(()),
                }
            }
            FailKind::TripleFault => write!(
                f,
                "the guest triple-faulted ({name}, code {code:#x}) at rip={rip:#x}"
            ),
            FailKind::EntryFailed => write!(
                f,
                "the CPU refused to enter the guest: its state fails the consistency checks ({name}, code {code:#x}) at rip={rip:#x}"
            ),
            FailKind::StringIo => {
                f.write_str("string port I/O is not emulated yet")?;
                if let Exit::Io(io) = self.exit {
                    let rep = if io.rep { "rep " } else { "" };
                    let (mnemonic, port) = (io.mnemonic(), io.port);
                    write!(f, ": {rep}{mnemonic} port {port:#x}")?;
                }
                write!(f, " ({name}, code {code:#x}) at rip={rip:#x}")
            }
            FailKind::HaltedWithInterruptsEnabled => write!(
                f,
                "guest halted waiting for an interrupt, and no device can raise one yet ({name}, code {code:#x}) at rip={rip:#x}"
            ),
            FailKind::NoNextRip => write!(
                f,
                "the exit does not give the next instruction's address and instructions are not decoded yet ({name}, code {code:#x}) at rip={rip:#x}"
            ),
            FailKind::AbiMismatch { record } => write!(
                f,
                "the exit record is from ABI version {record}, this server speaks version {} ({name}, code {code:#x}) at rip={rip:#x}",
                ipc_proto::ABI_VERSION
            ),
        }
    }
}

/// The exit handler: decodes exits and routes port I/O to the devices.
pub struct Vmm<'d> {
    router: Router<'d>,
}

impl<'d> Vmm<'d> {
    /// A handler around a router with its devices registered.
    pub fn new(router: Router<'d>) -> Self {
        Self { router }
    }

    /// The router.
    pub fn router(&self) -> &Router<'d> {
        &self.router
    }

    /// The router, to register more devices.
    pub fn router_mut(&mut self) -> &mut Router<'d> {
        &mut self.router
    }

    /// Accesses to unclaimed ports so far; its `Display` is the statistics
    /// line's suffix ` unknown_port_reads=N unknown_port_writes=N`.
    pub fn unknown_ports(&self) -> UnknownPortCounts {
        self.router.unknown()
    }

    /// Handles one exit.
    pub fn handle(&mut self, rec: &ExitRecord) -> Action {
        let exit = Exit::decode(rec);
        if rec.abi_version != ipc_proto::ABI_VERSION {
            let kind = FailKind::AbiMismatch {
                record: rec.abi_version,
            };
            return Action::Fail(FailReason::new(kind, exit, rec));
        }
        let fail = |kind| Action::Fail(FailReason::new(kind, exit, rec));
        match exit {
            Exit::Io(io) if io.string => fail(FailKind::StringIo),
            Exit::Io(io) => match next_rip(rec) {
                Some(rip) => self.port_io(rec, io, rip),
                None => fail(FailKind::NoNextRip),
            },
            Exit::Hlt {
                interrupts_enabled: false,
            } => Action::Stop { status: 0 },
            Exit::Hlt {
                interrupts_enabled: true,
            } => fail(FailKind::HaltedWithInterruptsEnabled),
            Exit::Shutdown => fail(FailKind::TripleFault),
            Exit::EntryFailed => fail(FailKind::EntryFailed),
            Exit::Cpuid
            | Exit::Msr { .. }
            | Exit::NestedPageFault { .. }
            | Exit::Exception { .. }
            | Exit::Other { .. } => fail(FailKind::Unhandled),
        }
    }

    fn port_io(&mut self, rec: &ExitRecord, io: IoAccess, next_rip: u64) -> Action {
        let mut regs = rec.regs;
        regs.rip = next_rip;
        let flags = match io.direction {
            IoDirection::Out => match self.router.write(io.port, io.size, io.value) {
                WriteOutcome::Stop { status } => return Action::Stop { status },
                WriteOutcome::Continue => ResumeFlags::SET_RIP,
            },
            IoDirection::In => {
                let value = self.router.read(io.port, io.size);
                regs.rax = merge_in(regs.rax, io.size, value);
                ResumeFlags::SET_GPRS | ResumeFlags::SET_RIP
            }
        };
        Action::Resume(resume(flags, regs))
    }
}

/// RAX after `IN`: size 1 replaces AL, size 2 AX, size 4 sets RAX to the
/// zero-extended value.
pub fn merge_in(rax: u64, size: IoSize, value: u32) -> u64 {
    let value = u64::from(value & size.mask());
    match size {
        IoSize::Byte => (rax & !0xff) | value,
        IoSize::Word => (rax & !0xffff) | value,
        IoSize::Dword => value,
    }
}

/// The address of the instruction after the exiting one: the record's
/// `next_rip`, or for an SVM IOIO exit EXITINFO2 (APM vol. 2, 15.10.2).
fn next_rip(rec: &ExitRecord) -> Option<u64> {
    if rec.next_rip != 0 {
        Some(rec.next_rip)
    } else if VcpuArch::from_raw(rec.arch) == Some(VcpuArch::Svm)
        && rec.exit_code == svm_exit::IOIO
        && rec.exit_info2 != 0
    {
        Some(rec.exit_info2)
    } else {
        None
    }
}

/// A resume of this ABI version applying `flags` with `regs`.
pub fn resume(flags: ResumeFlags, regs: GuestRegs) -> Resume {
    Resume {
        abi_version: ipc_proto::ABI_VERSION,
        flags: flags.bits(),
        regs,
        event: EventInjection::default(),
        paging: Default::default(),
        cr2: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::debug_exit::{self, DebugExit};
    use crate::devices::uart16550::{self, Uart16550};
    use crate::exit::tests::{ioio, svm_record};
    use ipc_proto::vcpu::svm_ioio::*;
    use std::string::ToString;
    use std::vec::Vec;

    fn io_record(info1: u64, rax: u64) -> ExitRecord {
        let mut rec = svm_record(svm_exit::IOIO, info1, 0x10_0021);
        rec.regs.rip = 0x10_0020;
        rec.next_rip = 0x10_0021;
        rec.regs.rax = rax;
        rec.regs.rbx = 0xb;
        rec
    }

    fn resumed(a: Action) -> Resume {
        match a {
            Action::Resume(r) => r,
            other => panic!("expected a resume, got {other:?}"),
        }
    }

    fn failed(a: Action) -> FailReason {
        match a {
            Action::Fail(r) => r,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn in_al_changes_only_al_and_moves_rip() {
        let mut uart = Uart16550::new(Vec::new());
        let mut r = Router::new();
        r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
            .unwrap();
        let mut vmm = Vmm::new(r);
        let rec = io_record(ioio(0x3fd, SZ8, true), 0x1122_3344_5566_7788);
        let res = resumed(vmm.handle(&rec));
        assert_eq!(res.abi_version, ipc_proto::ABI_VERSION);
        assert_eq!(
            ResumeFlags::from_bits(res.flags),
            Some(ResumeFlags::SET_GPRS | ResumeFlags::SET_RIP)
        );
        assert_eq!(res.regs.rax, 0x1122_3344_5566_7760, "AL = LSR = 0x60");
        assert_eq!(res.regs.rip, 0x10_0021);
        let mut want = rec.regs;
        want.rax = res.regs.rax;
        want.rip = rec.next_rip;
        assert_eq!(res.regs, want, "nothing else changes");
    }

    #[test]
    fn in_ax_and_eax_from_an_unknown_port() {
        let mut vmm = Vmm::new(Router::new());
        let res = resumed(vmm.handle(&io_record(ioio(0x80, SZ16, true), u64::MAX - 0xffff)));
        assert_eq!(res.regs.rax, u64::MAX);
        let res = resumed(vmm.handle(&io_record(ioio(0x80, SZ32, true), u64::MAX)));
        assert_eq!(res.regs.rax, 0xffff_ffff, "32-bit IN zero-extends");
        let res = resumed(vmm.handle(&io_record(ioio(0x80, SZ8, false), 0)));
        assert_eq!(
            ResumeFlags::from_bits(res.flags),
            Some(ResumeFlags::SET_RIP)
        );
        assert_eq!(
            vmm.unknown_ports(),
            UnknownPortCounts {
                reads: 2,
                writes: 1
            }
        );
    }

    #[test]
    fn merge_in_by_size() {
        let rax = 0xaaaa_bbbb_cccc_dddd;
        assert_eq!(
            merge_in(rax, IoSize::Byte, 0x1234_5678),
            0xaaaa_bbbb_cccc_dd78
        );
        assert_eq!(
            merge_in(rax, IoSize::Word, 0x1234_5678),
            0xaaaa_bbbb_cccc_5678
        );
        assert_eq!(merge_in(rax, IoSize::Dword, 0x1234_5678), 0x1234_5678);
    }

    #[test]
    fn out_to_the_uart_reaches_the_sink() {
        let mut uart = Uart16550::new(Vec::new());
        {
            let mut r = Router::new();
            r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
                .unwrap();
            let mut vmm = Vmm::new(r);
            let res = resumed(vmm.handle(&io_record(ioio(0x3f8, SZ8, false), 0x4141)));
            assert_eq!(res.regs.rip, 0x10_0021);
            assert_eq!(res.regs.rax, 0x4141, "OUT leaves RAX alone");
        }
        assert_eq!(uart.sink(), b"A");
    }

    #[test]
    fn next_rip_falls_back_to_exitinfo2_for_ioio() {
        let mut vmm = Vmm::new(Router::new());
        let mut rec = io_record(ioio(0x80, SZ8, false), 0);
        rec.next_rip = 0;
        rec.exit_info2 = 0x10_0030;
        assert_eq!(resumed(vmm.handle(&rec)).regs.rip, 0x10_0030);
        rec.exit_info2 = 0;
        assert_eq!(failed(vmm.handle(&rec)).kind, FailKind::NoNextRip);
    }

    #[test]
    fn a_debug_exit_write_stops_with_its_status() {
        let mut dev = DebugExit::new();
        let mut r = Router::new();
        r.register(debug_exit::PORT, debug_exit::LEN, &mut dev)
            .unwrap();
        let mut vmm = Vmm::new(r);
        let rec = io_record(ioio(0xf4, SZ8, false), 0x1_03);
        assert_eq!(vmm.handle(&rec), Action::Stop { status: 3 });
        let rec = io_record(ioio(0xf4, SZ8, false), 0);
        assert_eq!(vmm.handle(&rec), Action::Stop { status: 0 });
    }

    #[test]
    fn hlt_with_interrupts_off_is_a_clean_stop() {
        let mut vmm = Vmm::new(Router::new());
        let mut rec = svm_record(svm_exit::HLT, 0, 0);
        assert_eq!(vmm.handle(&rec), Action::Stop { status: 0 });
        rec.regs.rflags = 0x202;
        let why = failed(vmm.handle(&rec));
        assert_eq!(why.kind, FailKind::HaltedWithInterruptsEnabled);
        assert!(why
            .to_string()
            .starts_with("guest halted waiting for an interrupt, and no device can raise one yet"));
    }

    #[test]
    fn an_unknown_exit_fails_with_its_code_and_rip() {
        let mut vmm = Vmm::new(Router::new());
        let mut rec = svm_record(svm_exit::CPUID, 0, 0);
        rec.regs.rip = 0x10_0023;
        let why = failed(vmm.handle(&rec));
        assert_eq!(why.kind, FailKind::Unhandled);
        assert_eq!(
            why.to_string(),
            "unhandled exit cpuid (code 0x72) at rip=0x100023"
        );
        rec.exit_code = svm_exit::NPF;
        rec.exit_info1 = 0x4;
        rec.exit_info2 = 0xfee0_0000;
        assert_eq!(
            failed(vmm.handle(&rec)).to_string(),
            "unhandled exit npf (code 0x400) at rip=0x100023: gpa=0xfee00000 error_code=0x4"
        );
        rec.exit_code = 0x4d;
        assert_eq!(
            failed(vmm.handle(&rec)).to_string(),
            "unhandled exit exception #GP (code 0x4d) at rip=0x100023"
        );
        rec.exit_code = svm_exit::MSR;
        rec.exit_info1 = 1;
        assert_eq!(
            failed(vmm.handle(&rec)).to_string(),
            "unhandled exit msr (code 0x7c) at rip=0x100023: wrmsr"
        );
    }

    #[test]
    fn shutdown_and_entry_failure_say_what_happened() {
        let mut vmm = Vmm::new(Router::new());
        let rec = svm_record(svm_exit::SHUTDOWN, 0, 0);
        assert_eq!(
            failed(vmm.handle(&rec)).to_string(),
            "the guest triple-faulted (shutdown, code 0x7f) at rip=0x100020"
        );
        let rec = svm_record(svm_exit::INVALID, 0, 0);
        let why = failed(vmm.handle(&rec));
        assert_eq!(why.kind, FailKind::EntryFailed);
        assert!(why.to_string().contains("code 0xffffffffffffffff"));
    }

    #[test]
    fn string_io_is_refused_clearly() {
        let mut vmm = Vmm::new(Router::new());
        let rec = io_record(ioio(0x3f8, SZ8, false) | STRING | REP, 0);
        let why = failed(vmm.handle(&rec));
        assert_eq!(why.kind, FailKind::StringIo);
        assert_eq!(
            why.to_string(),
            "string port I/O is not emulated yet: rep outsb port 0x3f8 (ioio, code 0x7b) at rip=0x100020"
        );
    }

    #[test]
    fn a_record_from_another_abi_fails() {
        let mut vmm = Vmm::new(Router::new());
        let mut rec = io_record(ioio(0x80, SZ8, false), 0);
        rec.abi_version = 99;
        let why = failed(vmm.handle(&rec));
        assert_eq!(why.kind, FailKind::AbiMismatch { record: 99 });
        assert!(why.to_string().contains("ABI version 99"));
    }
}
