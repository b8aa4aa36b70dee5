//! Exit-handler tests: scripted exit records against the real devices, a
//! test RAM and a host whose clock the test moves.

use core::cell::Cell;

use super::*;
use crate::cpuid::tests::{EveryFeature, XsaveHost};
use crate::devices::debug_exit::{self, DebugExit};
use crate::devices::i8042::{self, I8042};
use crate::devices::pit::{self, Pit};
use crate::devices::post::{self, PostCode};
use crate::devices::rtc::{self, Rtc};
use crate::devices::uart16550::{self, Uart16550};
use crate::emulate::memory::tests::TestRam;
use crate::exit::tests::{ioio, svm_record};
use crate::mmio::ScratchRegisters;
use ipc_proto::vcpu::svm_ioio::*;
use proptest::prelude::*;
use std::string::ToString;
use std::vec::Vec;

/// A host whose time the test sets (in nanoseconds: 1 GHz ticks).
struct TestHost<'a> {
    time: &'a Cell<u64>,
    input: bool,
    /// The platform offers XSAVE (with AVX): `cpuid::tests::XsaveHost`.
    xsave: bool,
}

impl HostCpuid for TestHost<'_> {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        if self.xsave {
            XsaveHost { avx: true }.host_cpuid(leaf, subleaf)
        } else {
            EveryFeature.host_cpuid(leaf, subleaf)
        }
    }
    fn offers_xsave(&self) -> bool {
        self.xsave
    }
}

impl Host for TestHost<'_> {
    fn now(&mut self) -> u64 {
        self.time.get()
    }
    fn ticks_per_second(&self) -> u64 {
        SECOND
    }
    fn wait_for_input(&mut self) -> bool {
        self.input
    }
}

const RIP: u64 = 0x10_0020;

/// A record of a flat 32-bit guest (the multiboot entry state).
fn flat(code: u64, info1: u64, info2: u64) -> ExitRecord {
    let mut rec = svm_record(code, info1, info2);
    rec.cr0 = 0x11;
    rec.cs = Segment {
        selector: 8,
        attrib: 0xc9b,
        limit: u32::MAX,
        base: 0,
    };
    rec.regs.rip = RIP;
    rec
}

fn io_record(info1: u64, rax: u64) -> ExitRecord {
    let mut rec = flat(svm_exit::IOIO, info1, RIP + 1);
    rec.next_rip = RIP + 1;
    rec.regs.rax = rax;
    rec.regs.rbx = 0xb;
    rec
}

fn out(port: u16, value: u8) -> ExitRecord {
    io_record(ioio(port, SZ8, false), u64::from(value))
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

fn flags(r: &Resume) -> ResumeFlags {
    ResumeFlags::from_bits(r.flags).expect("known flags")
}

/// What every test needs: the board, RAM and the host's clock.
struct World {
    board: Board,
    ram: TestRam,
    time: Cell<u64>,
}

impl World {
    fn new() -> Self {
        Self {
            board: Board::new(),
            ram: TestRam::new(2 << 20),
            time: Cell::new(0),
        }
    }
}

/// Declares `$vmm`, a handler over a world's board, RAM and clock, with
/// `$router`'s devices.
macro_rules! vmm {
    ($vmm:ident = $w:ident, $router:expr) => {
        vmm!($vmm = $w, $router, false);
    };
    ($vmm:ident = $w:ident, $router:expr, $xsave:expr) => {
        let mut ram = $w.ram.ram();
        let mut host = TestHost {
            time: &$w.time,
            input: false,
            xsave: $xsave,
        };
        #[allow(unused_mut)]
        let mut $vmm = Vmm::new($router, &$w.board, &mut ram, &mut host);
    };
}

#[test]
fn in_al_changes_only_al_and_moves_rip() {
    let mut w = World::new();
    let mut uart = Uart16550::new(Vec::new());
    let mut r = Router::new();
    r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
        .unwrap();
    vmm!(vmm = w, r);
    let rec = io_record(ioio(0x3fd, SZ8, true), 0x1122_3344_5566_7788);
    let res = resumed(vmm.handle(&rec));
    assert_eq!(res.abi_version, ipc_proto::ABI_VERSION);
    assert_eq!(flags(&res), ResumeFlags::SET_GPRS | ResumeFlags::SET_RIP);
    assert_eq!(res.regs.rax, 0x1122_3344_5566_7760, "AL = LSR = 0x60");
    assert_eq!(res.regs.rip, RIP + 1);
    let mut want = rec.regs;
    want.rax = res.regs.rax;
    want.rip = rec.next_rip;
    assert_eq!(res.regs, want, "nothing else changes");
}

#[test]
fn in_ax_and_eax_from_an_unknown_port() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let res = resumed(vmm.handle(&io_record(ioio(0x81, SZ16, true), u64::MAX - 0xffff)));
    assert_eq!(res.regs.rax, u64::MAX);
    let res = resumed(vmm.handle(&io_record(ioio(0x81, SZ32, true), u64::MAX)));
    assert_eq!(res.regs.rax, 0xffff_ffff, "32-bit IN zero-extends");
    let res = resumed(vmm.handle(&io_record(ioio(0x81, SZ8, false), 0)));
    assert_eq!(flags(&res), ResumeFlags::SET_RIP);
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
    let mut w = World::new();
    let mut uart = Uart16550::new(Vec::new());
    {
        let mut r = Router::new();
        r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
            .unwrap();
        vmm!(vmm = w, r);
        let res = resumed(vmm.handle(&io_record(ioio(0x3f8, SZ8, false), 0x4141)));
        assert_eq!(res.regs.rip, RIP + 1);
        assert_eq!(res.regs.rax, 0x4141, "OUT leaves RAX alone");
    }
    assert_eq!(uart.sink(), b"A");
}

#[test]
fn next_rip_falls_back_to_exitinfo2_then_to_decoding() {
    let mut w = World::new();
    // `out dx, al` at RIP.
    w.ram.bytes[RIP as usize] = 0xee;
    vmm!(vmm = w, Router::new());
    let mut rec = io_record(ioio(0x80, SZ8, false), 0);
    rec.next_rip = 0;
    rec.exit_info2 = 0x10_0030;
    assert_eq!(resumed(vmm.handle(&rec)).regs.rip, 0x10_0030);
    rec.exit_info2 = 0;
    assert_eq!(resumed(vmm.handle(&rec)).regs.rip, RIP + 1, "decoded");
    rec.regs.rip = 0xfee0_0000;
    assert_eq!(failed(vmm.handle(&rec)).kind, FailKind::NoNextRip);
}

#[test]
fn a_debug_exit_write_stops_with_its_status() {
    let mut w = World::new();
    let mut dev = DebugExit::new();
    let mut r = Router::new();
    r.register(debug_exit::PORT, debug_exit::LEN, &mut dev)
        .unwrap();
    vmm!(vmm = w, r);
    assert_eq!(vmm.handle(&out(0xf4, 3)), Action::Stop { status: 3 });
    assert_eq!(vmm.handle(&out(0xf4, 0)), Action::Stop { status: 0 });
}

#[test]
fn hlt_without_interrupts_fails_and_with_nothing_to_wake_fails() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let mut rec = flat(svm_exit::HLT, 0, 0);
    rec.next_rip = RIP + 1;
    // `cli; hlt` is no verdict: only port 0xf4 says the guest passed.
    let why = failed(vmm.handle(&rec));
    assert_eq!(why.kind, FailKind::HaltedWithInterruptsDisabled);
    assert!(why
        .to_string()
        .starts_with("the guest halted with interrupts disabled (cli; hlt)"));
    rec.regs.rflags = 0x202;
    let why = failed(vmm.handle(&rec));
    assert_eq!(why.kind, FailKind::HaltedWithInterruptsEnabled);
    assert!(why
        .to_string()
        .starts_with("guest halted waiting for an interrupt, and nothing can raise one"));
}

#[test]
fn unhandled_exits_fail_with_their_code_and_rip() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let mut rec = flat(0x8e, 0, 0);
    rec.regs.rip = 0x10_0023;
    let why = failed(vmm.handle(&rec));
    assert_eq!(why.kind, FailKind::Unhandled);
    assert_eq!(
        why.to_string(),
        "unhandled exit rdpru (code 0x8e) at rip=0x100023"
    );
    rec.exit_code = svm_exit::NPF;
    rec.exit_info1 = 0x4;
    rec.exit_info2 = 0x1000;
    assert_eq!(
        failed(vmm.handle(&rec)).to_string(),
        "nested page fault inside guest RAM (npf, code 0x400) at rip=0x100023: gpa=0x1000 error_code=0x4"
    );
    rec.exit_code = 0x03;
    rec.exit_info1 = 0;
    assert!(failed(vmm.handle(&rec))
        .to_string()
        .starts_with("a read cr3 exit reached the vmm-server"));
}

#[test]
fn shutdown_and_entry_failure_say_what_happened() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let rec = flat(svm_exit::SHUTDOWN, 0, 0);
    assert_eq!(
        failed(vmm.handle(&rec)).to_string(),
        "the guest triple-faulted (shutdown, code 0x7f) at rip=0x100020"
    );
    let why = failed(vmm.handle(&flat(svm_exit::INVALID, 0, 0)));
    assert_eq!(why.kind, FailKind::EntryFailed);
    assert!(why.to_string().contains("code 0xffffffffffffffff"));
}

#[test]
fn a_record_from_another_abi_fails() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let mut rec = out(0x80, 0);
    rec.abi_version = 99;
    let why = failed(vmm.handle(&rec));
    assert_eq!(why.kind, FailKind::AbiMismatch { record: 99 });
    assert!(why.to_string().contains("ABI version 99"));
}

#[test]
fn rep_outsb_is_emulated_from_guest_memory() {
    let mut w = World::new();
    // rep outsb at RIP; the string at 0x2000.
    w.ram.bytes[RIP as usize..RIP as usize + 2].copy_from_slice(&[0xf3, 0x6e]);
    w.ram.bytes[0x2000..0x2003].copy_from_slice(b"hi\n");
    let mut uart = Uart16550::new(Vec::new());
    {
        let mut r = Router::new();
        r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
            .unwrap();
        vmm!(vmm = w, r);
        let mut rec = io_record(ioio(0x3f8, SZ8, false) | STRING | REP, 0);
        rec.regs.rsi = 0x2000;
        rec.regs.rcx = 3;
        rec.regs.rdx = 0x3f8;
        let res = resumed(vmm.handle(&rec));
        assert_eq!(
            (res.regs.rsi, res.regs.rcx, res.regs.rip),
            (0x2003, 0, RIP + 2)
        );
        assert_eq!(flags(&res), ResumeFlags::SET_GPRS | ResumeFlags::SET_RIP);
        assert_eq!(vmm.stats().emulated, 1);
    }
    assert_eq!(uart.sink(), b"hi\n");
}

#[test]
fn cpuid_answers_from_the_policy() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let mut rec = flat(svm_exit::CPUID, 0, 0);
    rec.next_rip = RIP + 2;
    rec.regs.rax = 0xffff_ffff_4000_0000;
    rec.regs.rcx = 7;
    let res = resumed(vmm.handle(&rec));
    assert_eq!(res.regs.rax, 0x4000_0001);
    assert_eq!(res.regs.rbx.to_le_bytes()[..4], *b"spli");
    assert_eq!(res.regs.rcx.to_le_bytes()[..4], *b"tvis");
    assert_eq!(res.regs.rdx.to_le_bytes()[..4], *b"or\0\0");
    assert_eq!(res.regs.rip, RIP + 2);
    rec.regs.rax = 1;
    let res = resumed(vmm.handle(&rec));
    assert_ne!(res.regs.rcx & (1 << 31), 0, "hypervisor bit");
    assert_eq!(res.regs.rcx & (1 << 5), 0, "no VMX");
}

#[test]
fn msrs_answer_fault_or_need_the_stub() {
    let mut w = World::new();
    w.time.set(0x1234_5678_9abc);
    vmm!(vmm = w, Router::new());
    let mut rec = flat(svm_exit::MSR, 0, 0);
    rec.next_rip = RIP + 2;
    rec.regs.rcx = 0x10; // TSC
    let res = resumed(vmm.handle(&rec));
    assert_eq!((res.regs.rax, res.regs.rdx), (0x5678_9abc, 0x1234));
    // An unknown MSR: #GP(0) at the same RIP.
    rec.regs.rcx = 0xc001_0117;
    let res = resumed(vmm.handle(&rec));
    assert_eq!(res.regs.rip, RIP);
    assert_eq!(
        res.event,
        EventInjection {
            vector: 13,
            kind: 3,
            has_error_code: 1,
            reserved: 0,
            error_code: 0
        }
    );
    assert!(flags(&res).contains(ResumeFlags::INJECT_EVENT));
    // WRMSR PAT with a valid value.
    rec.exit_info1 = 1;
    rec.regs.rcx = 0x277;
    rec.regs.rax = 0x0007_0406;
    rec.regs.rdx = 0x0007_0106;
    assert_eq!(resumed(vmm.handle(&rec)).regs.rip, RIP + 2);
    // WRMSR EFER.LME: the stub must do it.
    rec.regs.rcx = 0xc000_0080;
    rec.regs.rax = 0x100;
    rec.regs.rdx = 0;
    let why = failed(vmm.handle(&rec));
    assert_eq!(
        why.kind,
        FailKind::MsrNeedsStub {
            index: 0xc000_0080,
            write: true
        }
    );
    assert!(why
        .to_string()
        .starts_with("wrmsr of EFER (0xc0000080) needs the stub"));
}

#[test]
fn mmio_writes_and_reads_are_emulated() {
    const BASE: u64 = 0xfeb0_0000;
    let mut w = World::new();
    // mov [ebx+8], eax ; then mov ecx, [ebx+8]
    w.ram.bytes[RIP as usize..RIP as usize + 6]
        .copy_from_slice(&[0x89, 0x43, 0x08, 0x8b, 0x4b, 0x08]);
    let mut scratch = ScratchRegisters::default();
    let mut mmio = MmioRouter::new();
    mmio.register(BASE, 0x1000, &mut scratch).unwrap();
    vmm!(vmm = w, Router::new());
    let mut vmm = vmm.with_mmio(mmio);
    let mut rec = flat(svm_exit::NPF, 0x6, BASE + 8);
    rec.regs.rbx = BASE;
    rec.regs.rax = 0xcafe_f00d;
    let res = resumed(vmm.handle(&rec));
    assert_eq!(res.regs.rip, RIP + 3);
    let mut rec = flat(svm_exit::NPF, 0x4, BASE + 8);
    rec.regs.rip = RIP + 3;
    rec.regs.rbx = BASE;
    let res = resumed(vmm.handle(&rec));
    assert_eq!((res.regs.rcx, res.regs.rip), (0xcafe_f00d, RIP + 6));
}

#[test]
fn garbage_behind_an_mmio_exit_is_ud_and_unsupported_fails_with_the_bytes() {
    let mut w = World::new();
    w.ram.bytes[RIP as usize..RIP as usize + 3].copy_from_slice(&[0xf0, 0x8b, 0x03]);
    w.ram.bytes[0x200..0x203].copy_from_slice(&[0x0f, 0x58, 0x03]);
    vmm!(vmm = w, Router::new());
    let rec = flat(svm_exit::NPF, 0x4, 0xfeb0_0000);
    let res = resumed(vmm.handle(&rec));
    assert_eq!((res.event.vector, res.event.has_error_code), (6, 0));
    let mut rec = flat(svm_exit::NPF, 0x4, 0xfeb0_0000);
    rec.regs.rip = 0x200;
    let why = failed(vmm.handle(&rec));
    assert_eq!(
        why.to_string(),
        "cannot emulate addps [0f 58 03] (npf, code 0x400) at rip=0x200: gpa=0xfeb00000"
    );
    // Executing from MMIO is reported, not emulated.
    let rec = flat(svm_exit::NPF, 0x14, 0xfeb0_0000);
    assert_eq!(failed(vmm.handle(&rec)).kind, FailKind::MmioFetch);
}

#[test]
fn a_page_fault_in_emulation_is_injected_with_cr2() {
    let mut w = World::new();
    // Paging on with an empty page directory at 0x1000: the fetch faults.
    vmm!(vmm = w, Router::new());
    let mut rec = flat(svm_exit::NPF, 0x4, 0xfeb0_0000);
    rec.cr0 = 0x8000_0011;
    rec.cr3 = 0x1000;
    let res = resumed(vmm.handle(&rec));
    assert_eq!(
        (
            res.event.vector,
            res.event.has_error_code,
            res.event.error_code
        ),
        (14, 1, 0)
    );
    assert_eq!(res.cr2, RIP);
    assert!(flags(&res).contains(ResumeFlags::SET_CR2));
}

/// A nested page fault during the guest's own table walk (SVM EXITINFO1
/// bit 33) on a page table outside RAM: the entry reads as not present,
/// so the guest takes the #PF the mmu-server's walker gives it under
/// shadow paging (error code without P, CR2 = the operand's address).
#[test]
fn a_guest_page_table_outside_ram_is_a_not_present_fault() {
    let mut w = World::new();
    // 32-bit paging: PDE 0 maps 0-4 MiB through a page table in RAM (the
    // code's page identity-mapped), PDE 1 names a page table at 3 GiB.
    w.ram.put32(0x1000, 0x2000 | 0x7);
    w.ram.put32(0x1004, 0xc000_0000 | 0x7);
    w.ram
        .put32(0x2000 + (RIP >> 12) * 4, (RIP as u32 & !0xfff) | 0x7);
    // mov [ebx], eax
    w.ram.bytes[RIP as usize..RIP as usize + 2].copy_from_slice(&[0x89, 0x03]);
    vmm!(vmm = w, Router::new());
    let mut rec = flat(svm_exit::NPF, (1 << 33) | 0x7, 0xc000_0000 + 0x123 * 4);
    rec.cr0 = 0x8001_0011;
    rec.cr3 = 0x1000;
    rec.regs.rbx = 0x52_3000;
    let res = resumed(vmm.handle(&rec));
    assert_eq!(
        (res.event.vector, res.event.error_code, res.cr2),
        (14, 0x2, 0x52_3000)
    );
    assert_eq!(res.regs.rip, RIP, "the instruction did not complete");
    // While delivering a #PF: a #DF instead; while delivering a #DF: a
    // shutdown; while delivering anything else the VM ends (the exit does
    // not say which address the delivery touched).
    rec.exit_int_info = 0x8000_0b0e;
    let res = resumed(vmm.handle(&rec));
    assert_eq!(
        (
            res.event.vector,
            res.event.has_error_code,
            res.event.error_code
        ),
        (8, 1, 0)
    );
    assert!(!flags(&res).contains(ResumeFlags::SET_CR2));
    rec.exit_int_info = 0x8000_0b08;
    assert_eq!(failed(vmm.handle(&rec)).kind, FailKind::TripleFault);
    rec.exit_int_info = 0x8000_0020;
    assert_eq!(failed(vmm.handle(&rec)).kind, FailKind::EventDeliveryFault);
}

#[test]
fn a_fault_loop_ends_the_vm() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let rec = flat(svm_exit::EXCP_BASE + 13, 0x10, 0);
    for _ in 0..63 {
        let r = resumed(vmm.handle(&rec));
        assert_eq!(
            (r.event.vector, r.event.error_code),
            (13, 0x10),
            "reflected"
        );
    }
    let why = failed(vmm.handle(&rec));
    assert_eq!(
        why.kind,
        FailKind::FaultLoop {
            vector: 13,
            count: 64
        }
    );
    assert!(why
        .to_string()
        .starts_with("the guest loops on #GP (64 times in a row)"));
    let history: Vec<_> = vmm.history().iter().collect();
    assert_eq!(history.len(), 8);
}

#[test]
fn vmmcall_is_ud_and_exitintinfo_is_reinjected() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let r = resumed(vmm.handle(&flat(svm_exit::VMMCALL, 0, 0)));
    assert_eq!((r.event.vector, r.event.kind), (6, 3));
    // An INTR exit while a #PF with error code 2 was being delivered.
    let mut rec = flat(svm_exit::INTR, 0, 0);
    rec.exit_int_info = (1 << 31) | (1 << 11) | (3 << 8) | 14 | (2 << 32);
    let r = resumed(vmm.handle(&rec));
    assert_eq!(
        r.event,
        EventInjection {
            vector: 14,
            kind: 3,
            has_error_code: 1,
            reserved: 0,
            error_code: 2
        }
    );
    assert_eq!(flags(&r), ResumeFlags::INJECT_EVENT);
}

/// The exits the stub intercepts so that they never run natively: MONITOR,
/// MWAIT and INVLPGA are #UD (the guest's CPUID has none of them), RDPMC
/// #GP(0) (no counters), WBINVD and INVD complete, a task switch ends the VM.
#[test]
fn intercepted_instructions_fault_complete_or_stop_as_documented() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    for code in [
        svm_exit::MONITOR,
        svm_exit::MWAIT,
        svm_exit::MWAIT_CONDITIONAL,
        svm_exit::INVLPGA,
    ] {
        let r = resumed(vmm.handle(&flat(code, 0, 0)));
        assert_eq!((r.event.vector, r.event.kind), (6, 3), "{code:#x}");
        assert!(!flags(&r).contains(ResumeFlags::SET_RIP), "{code:#x}");
    }
    let r = resumed(vmm.handle(&flat(svm_exit::RDPMC, 0, 0)));
    assert_eq!(
        (r.event.vector, r.event.has_error_code, r.event.error_code),
        (13, 1, 0)
    );
    for code in [svm_exit::WBINVD, svm_exit::INVD] {
        let mut rec = flat(code, 0, 0);
        rec.next_rip = RIP + 2;
        let r = resumed(vmm.handle(&rec));
        assert_eq!(r.regs.rip, RIP + 2, "{code:#x}");
        assert!(!flags(&r).contains(ResumeFlags::INJECT_EVENT));
    }
    let why = failed(vmm.handle(&flat(svm_exit::TASK_SWITCH, 0, 0)));
    assert_eq!(why.kind, FailKind::TaskSwitch);
    assert!(why.to_string().contains("task switch"), "{why}");
    // QEMU's failed VMRUN, 32 bits wide, is never an ordinary exit.
    let why = failed(vmm.handle(&flat(0xffff_ffff, 0, 0)));
    assert_eq!(why.kind, FailKind::EntryFailed);
}

#[test]
fn the_keyboard_controller_resets_the_machine() {
    let mut w = World::new();
    let mut kbd = I8042::new(Some(w.board.irq.pin(1)));
    let mut r = Router::new();
    r.register_ranges(&i8042::RANGES, &mut kbd).unwrap();
    vmm!(vmm = w, r);
    assert_eq!(vmm.handle(&out(0x64, 0xfe)), Action::Reset);
}

/// Programs the PIC (vector base 0x20) and PIT channel 0 (mode 2) with
/// port exits, as a guest's init does.
fn program_timer(vmm: &mut Vmm<'_>, count: u16) {
    for (port, v) in [
        (0x20, 0x11),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xa0, 0x11),
        (0xa1, 0x28),
        (0xa1, 0x02),
        (0xa1, 0x01),
        (0x21, 0xfe),
        (0xa1, 0xff),
        (0x43, 0x34),
        (0x40, count as u8),
        (0x40, (count >> 8) as u8),
    ] {
        resumed(vmm.handle(&out(port, v)));
    }
}

#[test]
fn the_timer_interrupts_through_the_pic_as_the_guest_allows() {
    let mut w = World::new();
    let mut pit = Pit::new(&w.board.clock, Some(w.board.irq.pin(0)));
    let mut r = Router::new();
    r.register_ranges(&pit::RANGES, &mut pit).unwrap();
    vmm!(vmm = w, r);
    program_timer(&mut vmm, 1193);
    // HLT with IF=1: the clock skips to the first tick, IRQ 0 is injected
    // as vector 0x20 past the HLT.
    let mut hlt = flat(svm_exit::HLT, 0, 0);
    hlt.next_rip = RIP + 1;
    hlt.regs.rflags = 0x202;
    let r = resumed(vmm.handle(&hlt));
    assert_eq!(r.regs.rip, RIP + 1);
    assert_eq!((r.event.vector, r.event.kind), (0x20, 0));
    assert!(flags(&r).contains(ResumeFlags::INJECT_EVENT));
    assert_eq!(
        w.board.clock.now(),
        999_848,
        "virtual time moved to the tick"
    );
    // Until the guest sends EOI, the next tick waits in IRR: HLT warps a
    // few deadlines, then lets the guest halt again.
    let r = resumed(vmm.handle(&hlt));
    assert_eq!(r.regs.rip, RIP);
    assert!(!flags(&r).contains(ResumeFlags::INJECT_EVENT));
    // EOI with IF=0: the pending tick asks for an interrupt window.
    let r = resumed(vmm.handle(&out(0x20, 0x20)));
    assert!(flags(&r).contains(ResumeFlags::REQUEST_INTERRUPT_WINDOW));
    assert!(!flags(&r).contains(ResumeFlags::INJECT_EVENT));
    // The window opens (IF=1, no shadow): inject.
    let mut win = flat(svm_exit::VINTR, 0, 0);
    win.regs.rflags = 0x202;
    win.interrupt_shadow = 1;
    let r = resumed(vmm.handle(&win));
    assert!(
        flags(&r).contains(ResumeFlags::REQUEST_INTERRUPT_WINDOW),
        "shadow: wait"
    );
    win.interrupt_shadow = 0;
    let r = resumed(vmm.handle(&win));
    assert_eq!(r.event.vector, 0x20);
    assert!(vmm.stats().irqs >= 2 && vmm.stats().warps >= 1);
}

/// A port device that counts its polls.
struct PollCounter<'a>(&'a Cell<u32>);

impl crate::PortDevice for PollCounter<'_> {
    fn read(&mut self, _offset: u16, _size: IoSize) -> u32 {
        0
    }
    fn write(&mut self, _offset: u16, _size: IoSize, _value: u32) -> WriteOutcome {
        WriteOutcome::Continue
    }
    fn poll(&mut self) -> Option<Nanos> {
        self.0.set(self.0.get() + 1);
        None
    }
}

#[test]
fn devices_are_polled_twice_an_exit_and_again_after_a_notification() {
    let mut w = World::new();
    let polls = Cell::new(0);
    let mut dev = PollCounter(&polls);
    let mut r = Router::new();
    r.register(0x80, 1, &mut dev).unwrap();
    vmm!(vmm = w, r);
    let exit = |vmm: &mut Vmm<'_>| {
        let before = polls.get();
        w.time.set(w.time.get() + 1000);
        resumed(vmm.handle(&out(0x80, 1)));
        polls.get() - before
    };
    // The first exit has no earlier poll to go by, and no clock advance
    // (no earlier exit) to poll again after.
    assert_eq!(exit(&mut vmm), 2);
    assert_eq!(exit(&mut vmm), 2, "the last exit's final poll stands");
    assert_eq!(exit(&mut vmm), 2);
    // A notification may have raised a line: polled afresh.
    let _ = vmm.notified(0, false);
    assert_eq!(exit(&mut vmm), 3);
    assert_eq!(exit(&mut vmm), 2);
    // An exit that reaches no device and leaves the clock where it was
    // polls once: at the new clock reading.
    let cpuid = |vmm: &mut Vmm<'_>| {
        let before = polls.get();
        w.time.set(w.time.get() + 1000);
        resumed(vmm.handle(&flat(svm_exit::CPUID, 0, 0)));
        polls.get() - before
    };
    assert_eq!(cpuid(&mut vmm), 1);
    assert_eq!(exit(&mut vmm), 2);
    // An MMIO access may reach a device behind both routers.
    vmm.router_mut();
    assert_eq!(cpuid(&mut vmm), 2);
}

/// The exits of [`a_skipped_poll_changes_nothing`], with the time the host
/// moves before each (in microseconds): an OUT to an unclaimed port, a
/// CPUID, a PIT, RTC or UART access, a HLT.
fn poll_skip_run(ops: &[(u8, u16, u8, u16)], count: u16, poll_always: bool) -> Vec<String> {
    let mut w = World::new();
    let mut pit = Pit::new(&w.board.clock, Some(w.board.irq.pin(0)));
    let mut rtc = Rtc::new(&w.board.clock, Some(w.board.irq.pin(8)), 1_700_000_000);
    let mut uart = Uart16550::new(Vec::new()).with_irq(w.board.irq.pin(4));
    let mut r = Router::new();
    r.register_ranges(&pit::RANGES, &mut pit).unwrap();
    r.register(rtc::BASE, rtc::LEN, &mut rtc).unwrap();
    r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
        .unwrap();
    let mut ram = w.ram.ram();
    let mut host = TestHost {
        time: &w.time,
        input: false,
        xsave: false,
    };
    let config = VmmConfig {
        poll_always,
        tsc_offsetting: true,
        ..Default::default()
    };
    let mut vmm = Vmm::new(r, &w.board, &mut ram, &mut host).with_config(config);
    program_timer(&mut vmm, count);
    let mut seen = Vec::new();
    for &(kind, us, port, value) in ops {
        w.time.set(w.time.get() + u64::from(us) * 1000);
        let mut rec = match kind % 6 {
            0 => out(0x80, port),
            1 => flat(svm_exit::CPUID, 0, 0),
            2 => io_record(
                ioio(0x40 + u16::from(port % 4), SZ8, value & 1 == 0),
                u64::from(value),
            ),
            3 => io_record(
                ioio(0x70 + u16::from(port % 2), SZ8, value & 1 == 0),
                u64::from(value),
            ),
            4 => io_record(
                ioio(0x3f8 + u16::from(port % 8), SZ8, value & 1 == 0),
                u64::from(value),
            ),
            _ => flat(svm_exit::HLT, 0, 0),
        };
        rec.regs.rflags = 0x202;
        let action = vmm.handle(&rec);
        seen.push(format!("{action:?} clock={}", w.board.clock.now()));
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// The handler skips a poll of the port devices when none was accessed
    /// and the clock has not moved since the last: the guest sees the
    /// same resumes (registers, injected interrupts) and the same clock as
    /// with every poll made.
    #[test]
    fn a_skipped_poll_changes_nothing(
        ops in proptest::collection::vec((any::<u8>(), 0u16..3000, any::<u8>(), any::<u16>()), 1..120),
        count in 100u16..5000,
    ) {
        let skipping = poll_skip_run(&ops, count, false);
        let polling = poll_skip_run(&ops, count, true);
        prop_assert_eq!(skipping, polling);
    }
}

#[test]
fn a_slow_exit_does_not_jump_past_a_tick() {
    let mut w = World::new();
    let mut pit = Pit::new(&w.board.clock, Some(w.board.irq.pin(0)));
    let mut r = Router::new();
    r.register_ranges(&pit::RANGES, &mut pit).unwrap();
    vmm!(vmm = w, r);
    program_timer(&mut vmm, 1193);
    // A whole second passes on the host between two exits: the clock
    // stops at the next tick, and the tick is not lost.
    let before = w.board.clock.now();
    w.time.set(SECOND);
    let mut rec = out(0x80, 0);
    rec.regs.rflags = 0x202;
    let r = resumed(vmm.handle(&rec));
    let after = w.board.clock.now();
    // The first tick: 1193 PIT clocks, rounded up to whole nanoseconds.
    assert_eq!(after - before, 999_848);
    assert_eq!(r.event.vector, 0x20);
    // The next exit moves on by at most another period.
    let r = resumed(vmm.handle(&rec));
    assert!(w.board.clock.now() - after <= 1_000_000);
    let _ = r;
}

/// The PC board's local APIC timer, one-shot and short (16 us), fires
/// while the guest spins without exits of its own: only the stub's host
/// timer ends its runs (`intr` exits), each late by a host-dependent
/// amount (here: a 100 MHz TSC, as Bochs's, and exits 2.5 us to 2.5 ms
/// apart).
#[test]
fn a_short_local_apic_timer_fires_through_host_timer_exits() {
    use crate::devices::ioapic::IoApic;
    use crate::devices::lapic::LocalApic;
    use crate::mmio::MmioDevice;
    struct Slow<'a>(&'a Cell<u64>);
    impl HostCpuid for Slow<'_> {
        fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
            EveryFeature.host_cpuid(leaf, subleaf)
        }
    }
    impl Host for Slow<'_> {
        fn now(&mut self) -> u64 {
            self.0.get()
        }
        fn ticks_per_second(&self) -> u64 {
            100_000_000
        }
    }
    for step in [250, 2_500, 25_000, 250_000] {
        let mut w = World::new();
        let mut ram = w.ram.ram();
        let mut host = Slow(&w.time);
        let mut vmm = Vmm::new(Router::new(), &w.board, &mut ram, &mut host)
            .with_irqchip(IrqChip::pc(LocalApic::new(&w.board.clock), IoApic::new()));
        let mut tick = flat(svm_exit::INTR, 0, 0);
        tick.regs.rflags = 0x202;
        resumed(vmm.handle(&tick));
        let lapic = vmm.irq.lapic_mut().unwrap();
        lapic.write(0xf0, 4, 0x1ff); // software-enabled
        lapic.write(0x3e0, 4, 0x3); // divide by 16
        lapic.write(0x320, 4, 0x40); // one-shot, vector 0x40
        lapic.write(0x380, 4, 1000); // 16 us
        let mut injected = None;
        for n in 1..=100 {
            w.time.set(w.time.get() + step);
            let r = resumed(vmm.handle(&tick));
            if flags(&r).contains(ResumeFlags::INJECT_EVENT) {
                injected = Some((n, r.event.vector));
                break;
            }
        }
        assert_eq!(
            injected.map(|i| i.1),
            Some(0x40),
            "step {step}: {injected:?}"
        );
    }
}

#[test]
fn uart_input_interrupts_on_irq4() {
    struct Typed(std::collections::VecDeque<u8>);
    impl crate::console::ConsoleSink for Typed {
        fn write_byte(&mut self, _: u8) {}
        fn read_byte(&mut self) -> Option<u8> {
            self.0.pop_front()
        }
    }
    let mut w = World::new();
    let mut uart =
        Uart16550::new(Typed(b"x".iter().copied().collect())).with_irq(w.board.irq.pin(4));
    let mut r = Router::new();
    r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
        .unwrap();
    vmm!(vmm = w, r);
    program_timer(&mut vmm, 0xffff);
    resumed(vmm.handle(&out(0x21, 0xef))); // unmask IRQ 4 only
    resumed(vmm.handle(&out(0x3f9, 0x01))); // IER: receive interrupt
    let mut rec = out(0x3fc, 0x0b); // MCR: DTR, RTS, OUT2
    rec.regs.rflags = 0x202;
    let r = resumed(vmm.handle(&rec));
    assert_eq!(r.event.vector, 0x24, "IRQ 4 through the PIC");
    let mut rec = io_record(ioio(0x3f8, SZ8, true), 0);
    rec.regs.rflags = 0x202;
    let r = resumed(vmm.handle(&rec));
    assert_eq!(r.regs.rax & 0xff, u64::from(b'x'));
}

#[test]
fn real_mode_faults_push_no_error_code() {
    let mut w = World::new();
    // mov ax, [bx] with BX = 0xffff crosses the 64 KiB limit: #GP.
    w.ram.bytes[0x7c00..0x7c02].copy_from_slice(&[0x8b, 0x07]);
    vmm!(vmm = w, Router::new());
    let mut rec = svm_record(svm_exit::NPF, 0x4, 0xfeb0_0000);
    rec.cs = Segment {
        selector: 0,
        attrib: 0x9b,
        limit: 0xffff,
        base: 0,
    };
    rec.cr0 = 0x10;
    rec.regs.rip = 0x7c00;
    rec.regs.rbx = 0xffff;
    let r = resumed(vmm.handle(&rec));
    assert_eq!((r.event.vector, r.event.has_error_code), (13, 0));
}

/// Every device of the PC, for the fuzz-style test.
fn all_devices_accept_nonsense(ops: &[(u16, u8, u32, bool)], rflags: u64) {
    let mut w = World::new();
    let mut pit = Pit::new(&w.board.clock, Some(w.board.irq.pin(0)));
    let mut rtc = Rtc::new(&w.board.clock, Some(w.board.irq.pin(8)), 1_700_000_000);
    let mut kbd = I8042::new(Some(w.board.irq.pin(1)));
    let mut post = PostCode::new();
    let mut uart = Uart16550::new(Vec::new()).with_irq(w.board.irq.pin(4));
    let mut r = Router::new();
    r.register_ranges(&pit::RANGES, &mut pit).unwrap();
    r.register(rtc::BASE, rtc::LEN, &mut rtc).unwrap();
    r.register_ranges(&i8042::RANGES, &mut kbd).unwrap();
    r.register(post::PORT, post::LEN, &mut post).unwrap();
    r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
        .unwrap();
    vmm!(vmm = w, r);
    for &(port, size, value, is_in) in ops {
        let sz = [SZ8, SZ16, SZ32][usize::from(size % 3)];
        let mut rec = io_record(ioio(port, sz, is_in), u64::from(value));
        rec.regs.rflags = rflags;
        match vmm.handle(&rec) {
            Action::Resume(_) | Action::Reset | Action::Stop { .. } => {}
            Action::Fail(f) => panic!("{f}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Nonsense written to (and read from) every device's ports never
    /// fails the VM or panics.
    #[test]
    fn nonsense_on_every_port_keeps_running(
        ops in proptest::collection::vec(
            (prop_oneof![0u16..0x100, 0x3f8u16..0x400, 0x4d0u16..0x4d2, any::<u16>()], any::<u8>(), any::<u32>(), any::<bool>()),
            0..300),
        if_on in any::<bool>(),
    ) {
        all_devices_accept_nonsense(&ops, if if_on { 0x202 } else { 2 });
    }

    /// Random instruction bytes behind a simulated MMIO exit, in every
    /// mode: an orderly action, never a panic.
    #[test]
    fn random_bytes_behind_an_mmio_exit(
        bytes in proptest::collection::vec(any::<u8>(), 1..16),
        mode in 0u8..3,
        regs in proptest::array::uniform4(any::<u64>()),
        info1 in any::<u64>(),
        int_info in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let mut w = World::new();
        w.ram.bytes[RIP as usize..RIP as usize + bytes.len()].copy_from_slice(&bytes);
        let mut scratch = ScratchRegisters::default();
        let mut mmio = MmioRouter::new();
        mmio.register(0xfeb0_0000, 0x1000, &mut scratch).unwrap();
        vmm!(vmm = w, Router::new());
    let mut vmm = vmm.with_mmio(mmio);
        let mut rec = flat(svm_exit::NPF, info1 & 0x1f, 0xfeb0_0000 + (regs[0] & 0xfff));
        rec.exit_int_info = int_info;
        match mode {
            0 => {
                rec.cr0 = 0x10;
                rec.cs = Segment { selector: 0, attrib: 0x9b, limit: 0xffff, base: 0 };
                rec.regs.rip = RIP & 0xffff;
            }
            2 => {
                rec.efer = 0x500;
                rec.cs.attrib = 0xa9b;
            }
            _ => {}
        }
        rec.regs.rax = regs[1];
        rec.regs.rbx = 0xfeb0_0000 + (regs[2] & 0xfff);
        rec.regs.rcx = regs[3] & 0xff;
        rec.regs.rsi = 0xfeb0_0000;
        rec.regs.rdi = 0xfeb0_0800;
        for _ in 0..3 {
            match vmm.handle(&rec) {
                Action::Resume(r) => {
                    // Whatever the resume is, it names only known flags.
                    prop_assert!(ResumeFlags::from_bits(r.flags).is_some());
                }
                Action::Fail(f) => { let _ = f.to_string(); }
                Action::Stop { .. } | Action::Reset => {}
            }
        }
    }
}

/// The `timer` guest's measurement, scripted: PIT channel 2 windows polled
/// through port 0x61 while IRQ 0 ticks arrive, with the host's clock
/// moving 40 microseconds per exit.
#[test]
fn a_scripted_timer_guest_counts_a_thousand_ticks() {
    let mut w = World::new();
    let mut pit = Pit::new(&w.board.clock, Some(w.board.irq.pin(0)));
    let mut r = Router::new();
    r.register_ranges(&pit::RANGES, &mut pit).unwrap();
    vmm!(vmm = w, r);
    program_timer(&mut vmm, 1193);
    let mut ticks = 0u32;
    let mut exits = 0u64;
    let mut step = |vmm: &mut Vmm<'_>, rec: ExitRecord, ticks: &mut u32| {
        w.time.set(w.time.get() + 40_000);
        exits += 1;
        let r = resumed(vmm.handle(&rec));
        if flags(&r).contains(ResumeFlags::INJECT_EVENT) && r.event.vector == 0x20 {
            *ticks += 1;
            // The handler's EOI, with IF clear.
            resumed(vmm.handle(&out(0x20, 0x20)));
        }
        r
    };
    let mut poll = io_record(ioio(0x61, SZ8, true), 0);
    poll.regs.rflags = 0x202;
    for _ in 0..20 {
        for (port, v) in [(0x61u16, 1u8), (0x43, 0xb0), (0x42, 0x0b), (0x42, 0xe9)] {
            let mut rec = out(port, v);
            rec.regs.rflags = 0x202;
            step(&mut vmm, rec, &mut ticks);
        }
        let mut polls = 0;
        loop {
            let r = step(&mut vmm, poll, &mut ticks);
            polls += 1;
            assert!(polls < 100_000, "channel 2 never ends");
            if r.regs.rax & 0x20 != 0 {
                break;
            }
        }
    }
    // The windows' reprogramming (four exits each) adds about 3 ms.
    assert!(
        (1000..=1005).contains(&ticks),
        "{ticks} ticks in {exits} exits"
    );
}

#[test]
fn resumes_name_the_next_tick_as_the_exit_deadline() {
    let mut w = World::new();
    let mut pit = Pit::new(&w.board.clock, Some(w.board.irq.pin(0)));
    let mut r = Router::new();
    r.register_ranges(&pit::RANGES, &mut pit).unwrap();
    vmm!(vmm = w, r);
    // No timer yet: no deadline.
    let r = resumed(vmm.handle(&out(0x80, 0)));
    assert!(!flags(&r).contains(ResumeFlags::SET_EXIT_DEADLINE));
    // The count's high byte starts the PIT at host time 0 (the test host
    // counts nanoseconds): the first tick is 999_848 ns ahead.
    program_timer(&mut vmm, 1193);
    let r = resumed(vmm.handle(&out(0x43, 0x34)));
    assert!(flags(&r).contains(ResumeFlags::SET_EXIT_DEADLINE));
    assert_eq!(
        r.exit_deadline, 0,
        "a new mode without a count: no deadline"
    );
    resumed(vmm.handle(&out(0x40, 1193u16 as u8)));
    let r = resumed(vmm.handle(&out(0x40, (1193u16 >> 8) as u8)));
    assert!(flags(&r).contains(ResumeFlags::SET_EXIT_DEADLINE));
    assert_eq!(r.exit_deadline, 999_848);
    // The clock follows the host: the same deadline, not sent again.
    w.time.set(1000);
    let r = resumed(vmm.handle(&out(0x80, 0)));
    assert!(!flags(&r).contains(ResumeFlags::SET_EXIT_DEADLINE));
}

/// XSETBV and RDTSCP exits are #UD: the guest's CPUID shows no XSAVE, and
/// RDTSCP exits only where the host lacks it and CPUID hides it (see the
/// crate README, "CPU and MSRs").
#[test]
fn xsetbv_is_ud_without_xsave() {
    let mut w = World::new();
    vmm!(vmm = w, Router::new());
    let mut rec = flat(svm_exit::XSETBV, 0, 0);
    rec.next_rip = RIP + 3;
    let r = resumed(vmm.handle(&rec));
    assert_eq!(
        (r.event.vector, r.event.kind, r.event.has_error_code),
        (6, 3, 0)
    );
    assert_eq!(r.regs.rip, RIP);
    rec.exit_code = 0x87; // RDTSCP, should the stub intercept it
    let r = resumed(vmm.handle(&rec));
    assert_eq!((r.event.vector, r.regs.rip), (6, RIP));
    rec.arch = ipc_proto::VcpuArch::Vmx as u32;
    for code in [
        ipc_proto::exit::vmx_exit::XSETBV,
        ipc_proto::exit::vmx_exit::RDTSCP,
    ] {
        rec.exit_code = code;
        let r = resumed(vmm.handle(&rec));
        assert_eq!((r.event.vector, r.event.kind), (6, 3), "{code}");
    }
}

/// XSETBV where XSAVE is offered (SVM exit 0x8D, VMX reason 55): #UD
/// with CR4.OSXSAVE clear; #GP(0) at CPL 3, for XCR1, x87 clear, AVX
/// without SSE and a hidden component (PKRU, which the host has);
/// otherwise completed with `SET_XCR0`, and CPUID 0xD.0 EBX follows.
#[test]
fn xsetbv_is_checked_and_completed_with_set_xcr0() {
    use ipc_proto::x86::cr4::OSXSAVE;
    let mut w = World::new();
    vmm!(vmm = w, Router::new(), true);
    let xsetbv = |arch: ipc_proto::VcpuArch, ecx: u64, value: u64, cpl: u8| {
        let mut rec = flat(svm_exit::XSETBV, 0, 0);
        if arch == ipc_proto::VcpuArch::Vmx {
            rec.arch = arch as u32;
            rec.exit_code = ipc_proto::exit::vmx_exit::XSETBV;
        }
        rec.next_rip = RIP + 3;
        rec.cr4 = OSXSAVE;
        rec.cpl = cpl;
        rec.regs.rcx = ecx;
        rec.regs.rax = value & 0xffff_ffff | 0xdead_0000_0000_0000;
        rec.regs.rdx = value >> 32;
        rec
    };
    for arch in [ipc_proto::VcpuArch::Svm, ipc_proto::VcpuArch::Vmx] {
        let mut rec = xsetbv(arch, 0, 7, 0);
        rec.cr4 = 0;
        let r = resumed(vmm.handle(&rec));
        assert_eq!(
            (r.event.vector, r.regs.rip),
            (6, RIP),
            "#UD without OSXSAVE"
        );
        for (ecx, value, cpl) in [(0, 7, 3), (1, 7, 0), (0, 2, 0), (0, 5, 0), (0, 0x203, 0)] {
            let r = resumed(vmm.handle(&xsetbv(arch, ecx, value, cpl)));
            assert_eq!(
                (r.event.vector, r.event.has_error_code, r.event.error_code),
                (13, 1, 0),
                "{ecx} {value:#x} {cpl}"
            );
            assert!(!flags(&r).contains(ResumeFlags::SET_XCR0));
        }
        for value in [3, 7, 1] {
            let r = resumed(vmm.handle(&xsetbv(arch, 0, value, 0)));
            assert_eq!(
                flags(&r),
                ResumeFlags::SET_RIP | ResumeFlags::SET_XCR0,
                "{value}"
            );
            assert_eq!((r.xcr0, r.regs.rip), (value, RIP + 3));
        }
    }
    // CPUID 0xD.0 EBX: the area for the XCR0 the guest set last.
    let r = resumed(vmm.handle(&xsetbv(ipc_proto::VcpuArch::Svm, 0, 7, 0)));
    assert_eq!(r.xcr0, 7);
    let mut rec = flat(svm_exit::CPUID, 0, 0);
    rec.next_rip = RIP + 2;
    rec.cr4 = OSXSAVE;
    rec.regs.rax = 0xd;
    rec.regs.rcx = 0;
    let r = resumed(vmm.handle(&rec));
    assert_eq!((r.regs.rax, r.regs.rbx, r.regs.rcx), (7, 832, 832));
    assert!(!flags(&r).contains(ResumeFlags::SET_XCR0), "loaded once");
}

const TF: u64 = RFLAGS_TF | 2;

fn single_step_trap() -> EventInjection {
    EventInjection {
        vector: 1,
        kind: EventKind::Exception as u8,
        has_error_code: 0,
        reserved: 0,
        error_code: 0,
    }
}

/// RFLAGS.TF: the instructions the server completes (CPUID, IN, OUT,
/// RDMSR, WRMSR, an emulated MMIO access) end with the single-step #DB
/// past them, as the CPU would raise it; a faulting one raises only its
/// fault, and an exit that completed nothing (an interrupt window) none.
#[test]
fn trap_flag_single_steps_what_the_server_completes() {
    let mut w = World::new();
    w.ram.bytes[RIP as usize..RIP as usize + 3].copy_from_slice(&[0x8b, 0x4b, 0x08]);
    let mut post_code = PostCode::new();
    let mut r = Router::new();
    r.register(post::PORT, post::LEN, &mut post_code).unwrap();
    let mut scratch = ScratchRegisters::default();
    let mut mmio = MmioRouter::new();
    mmio.register(0xfeb0_0000, 0x1000, &mut scratch).unwrap();
    vmm!(vmm = w, r);
    let mut vmm = vmm.with_mmio(mmio);
    let mut cpuid = flat(svm_exit::CPUID, 0, 0);
    cpuid.next_rip = RIP + 2;
    cpuid.regs.rflags = TF;
    let mut rdmsr = flat(svm_exit::MSR, 0, 0);
    rdmsr.next_rip = RIP + 2;
    rdmsr.regs.rcx = 0xc001_0004;
    rdmsr.regs.rflags = TF;
    let mut wrmsr = rdmsr;
    wrmsr.exit_info1 = 1;
    let mut inb = io_record(ioio(0x80, SZ8, true), 0);
    inb.regs.rflags = TF;
    let mut outb = out(0x80, 0x55);
    outb.regs.rflags = TF;
    let mut load = flat(svm_exit::NPF, 0x4, 0xfeb0_0008);
    load.regs.rbx = 0xfeb0_0000;
    load.regs.rflags = TF;
    for (rec, next) in [
        (cpuid, RIP + 2),
        (rdmsr, RIP + 2),
        (wrmsr, RIP + 2),
        (inb, RIP + 1),
        (outb, RIP + 1),
        (load, RIP + 3),
    ] {
        let r = resumed(vmm.handle(&rec));
        assert_eq!(r.regs.rip, next, "{:#x}", rec.exit_code);
        assert_eq!(r.event, single_step_trap(), "{:#x}", rec.exit_code);
        assert!(flags(&r).contains(ResumeFlags::INJECT_EVENT));
        // Without TF: no trap.
        let mut plain = rec;
        plain.regs.rflags = 2;
        let r = resumed(vmm.handle(&plain));
        assert!(
            !flags(&r).contains(ResumeFlags::INJECT_EVENT),
            "{:#x}",
            rec.exit_code
        );
    }
    // A #GP (an unknown MSR) is the only event: the instruction did not
    // complete.
    let mut bad = rdmsr;
    bad.regs.rcx = 0xc001_0117;
    let r = resumed(vmm.handle(&bad));
    assert_eq!((r.event.vector, r.regs.rip), (13, RIP));
    // An interrupt window completes no instruction.
    let mut win = flat(svm_exit::VINTR, 0, 0);
    win.regs.rflags = TF | RFLAGS_IF;
    let r = resumed(vmm.handle(&win));
    assert!(!flags(&r).contains(ResumeFlags::INJECT_EVENT));
    // An event the exit interrupted is delivered again, with no trap.
    let mut again = cpuid;
    again.exit_int_info = EXITINTINFO_VALID | 3 << 8 | 14 | 1 << 11;
    let r = resumed(vmm.handle(&again));
    assert_eq!(r.event.vector, 14);
}

/// A REP string instruction under TF traps after every iteration: one
/// iteration per exit, RIP kept until the count runs out.
#[test]
fn trap_flag_steps_a_rep_outsb_one_iteration_at_a_time() {
    let mut w = World::new();
    w.ram.bytes[RIP as usize..RIP as usize + 2].copy_from_slice(&[0xf3, 0x6e]);
    w.ram.bytes[0x2000..0x2002].copy_from_slice(b"ok");
    let mut post_code = PostCode::new();
    let mut r = Router::new();
    r.register(post::PORT, post::LEN, &mut post_code).unwrap();
    vmm!(vmm = w, r);
    let mut rec = io_record(ioio(0x80, SZ8, false) | STRING | REP, 0);
    rec.regs.rsi = 0x2000;
    rec.regs.rcx = 2;
    rec.regs.rdx = 0x80;
    rec.regs.rflags = TF;
    let r = resumed(vmm.handle(&rec));
    assert_eq!((r.regs.rsi, r.regs.rcx, r.regs.rip), (0x2001, 1, RIP));
    assert_eq!(r.event, single_step_trap());
    rec.regs = r.regs;
    let r = resumed(vmm.handle(&rec));
    assert_eq!((r.regs.rsi, r.regs.rcx, r.regs.rip), (0x2002, 0, RIP + 2));
    assert_eq!(r.event, single_step_trap());
    // With the count already 0 the instruction completes at once: a trap.
    rec.regs = r.regs;
    rec.regs.rip = RIP;
    let r = resumed(vmm.handle(&rec));
    assert_eq!((r.regs.rip, r.event), (RIP + 2, single_step_trap()));
    drop(vmm);
    assert_eq!(post_code.writes(), 2);
    assert_eq!(post_code.last(), b'k');
}

/// A pending PIC interrupt waits for the window behind the single-step
/// trap, which has the higher priority.
#[test]
fn the_single_step_trap_comes_before_an_external_interrupt() {
    let mut w = World::new();
    let mut pit = Pit::new(&w.board.clock, Some(w.board.irq.pin(0)));
    let mut r = Router::new();
    r.register_ranges(&pit::RANGES, &mut pit).unwrap();
    vmm!(vmm = w, r);
    program_timer(&mut vmm, 1193);
    // A tick comes due during the next exit, a CPUID with IF and TF set.
    w.time.set(2_000_000);
    let mut cpuid = flat(svm_exit::CPUID, 0, 0);
    cpuid.next_rip = RIP + 2;
    cpuid.regs.rflags = 0x202 | RFLAGS_TF;
    let r = resumed(vmm.handle(&cpuid));
    assert_eq!((r.regs.rip, r.event), (RIP + 2, single_step_trap()));
    assert!(flags(&r).contains(ResumeFlags::REQUEST_INTERRUPT_WINDOW));
    assert_eq!(vmm.stats().irqs, 0);
}

/// Issue 11, defect 7: under nested paging a MOV to CR4 exits to the
/// vmm-server. A bit the VM's CPUID hides (OSXSAVE, PCIDE) is #GP(0) and
/// CR4 stays; an offered one is applied with `SET_PAGING`. The source
/// register comes from SVM decode assists, from the VMX qualification, or
/// from the decoded instruction (QEMU's TCG gives no decode assists).
#[test]
fn mov_to_cr4_refuses_hidden_bits_and_applies_offered_ones() {
    use ipc_proto::x86::cr4;
    let mut w = World::new();
    // `mov cr4, eax` at RIP.
    w.ram.bytes[RIP as usize..RIP as usize + 3].copy_from_slice(&[0x0f, 0x22, 0xe0]);
    vmm!(vmm = w, Router::new());
    let write = |info1: u64, rax: u64, rbx: u64| {
        let mut rec = flat(svm_exit::CR_WRITE_BASE + 4, info1, 0);
        rec.cr4 = cr4::PSE;
        (rec.regs.rax, rec.regs.rbx) = (rax, rbx);
        rec
    };
    let assisted_rbx = 1 << 63 | 3;
    let gp = |r: &Resume| {
        assert_eq!(flags(r) & ResumeFlags::SET_PAGING, ResumeFlags::empty());
        assert_eq!(r.regs.rip, RIP, "the MOV does not complete");
        assert_eq!(
            (
                r.event.vector,
                r.event.kind,
                r.event.has_error_code,
                r.event.error_code
            ),
            (13, 3, 1, 0)
        );
    };
    for rec in [
        write(0, cr4::PSE | cr4::OSXSAVE, 0),
        write(assisted_rbx, 0, cr4::PSE | cr4::OSXSAVE),
        write(assisted_rbx, 0, cr4::PSE | cr4::PCIDE),
        write(0, cr4::PGE | cr4::VMXE, 0),
        write(0, cr4::PGE | cr4::MCE, 0),
        write(0, cr4::PGE | cr4::LA57, 0),
    ] {
        gp(&resumed(vmm.handle(&rec)));
    }
    // Offered bits are applied, the MOV completed (decoded: 3 bytes).
    let on = cr4::PSE | cr4::PGE | cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::SMEP;
    for rec in [write(0, on, 0), write(assisted_rbx, 0x5555 << 32, on)] {
        let r = resumed(vmm.handle(&rec));
        assert!(flags(&r).contains(ResumeFlags::SET_PAGING | ResumeFlags::SET_RIP));
        assert_eq!(r.paging.cr4, on);
        assert_eq!(r.regs.rip, RIP + 3);
        assert_eq!(r.event.vector, 0);
    }
    // VMX: qualification CR 4, MOV to CR, GPR in bits 11:8 (RBX).
    let mut rec = write(4 | 3 << 8, 0, 0);
    rec.arch = ipc_proto::VcpuArch::Vmx as u32;
    rec.exit_code = ipc_proto::exit::vmx_exit::CR_ACCESS;
    rec.next_rip = RIP + 3;
    rec.cr4 = cr4::PSE | cr4::PGE;
    let r = resumed(vmm.handle(&rec));
    assert!(flags(&r).contains(ResumeFlags::SET_PAGING));
    assert_eq!(r.paging.cr4, 0, "PSE and PGE cleared");
    rec.regs.rbx = cr4::PGE | cr4::OSXSAVE;
    gp(&resumed(vmm.handle(&rec)));
    // Under shadow paging CR accesses are the mmu-server's.
    vmm.config.shadow_paging = true;
    let why = failed(vmm.handle(&write(0, cr4::PGE, 0)));
    assert_eq!(why.kind, FailKind::NotForVmm);
}

#[test]
fn mov_to_cr4_keeps_pae_in_long_mode_and_pcide_needs_long_mode() {
    use crate::vcpu::{mov_to_cr4, EFER_LMA, EFER_LME};
    use ipc_proto::x86::cr4;
    let all = u64::MAX >> 1;
    let mut cpu = VcpuState::from_record(&flat(0, 0, 0));
    cpu.cr4 = cr4::PAE;
    assert_eq!(mov_to_cr4(&cpu, 0, all), Some(0), "legacy mode");
    assert_eq!(mov_to_cr4(&cpu, cr4::PAE | cr4::PCIDE, all), None);
    cpu.efer = EFER_LME | EFER_LMA;
    assert_eq!(mov_to_cr4(&cpu, 0, all), None, "PAE cleared in long mode");
    assert_eq!(
        mov_to_cr4(&cpu, cr4::PAE | cr4::PCIDE, all),
        Some(cr4::PAE | cr4::PCIDE)
    );
    cpu.cr3 = 0x1001;
    assert_eq!(mov_to_cr4(&cpu, cr4::PAE | cr4::PCIDE, all), None);
    let offered = crate::cpuid::offered_cr4(&EveryFeature);
    assert_eq!(mov_to_cr4(&cpu, cr4::PAE | cr4::OSXSAVE, offered), None);
    assert_eq!(
        mov_to_cr4(&cpu, cr4::PAE | cr4::PGE, offered),
        Some(cr4::PAE | cr4::PGE)
    );
}

/// The guest's TSC leaves out the time the servers spend on each exit, as
/// the board's virtual clock does (Debian calibrated a host-TSC guest at
/// 1770 MHz against the PM timer): each resume moves the offset back by
/// the exit's handling time, so the guest's TSC never goes backwards.
#[test]
fn the_guest_tsc_leaves_out_the_time_spent_on_exits() {
    /// A host whose clock moves 100 ticks at every read.
    struct Ticking<'a>(&'a Cell<u64>);
    impl HostCpuid for Ticking<'_> {
        fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
            EveryFeature.host_cpuid(leaf, subleaf)
        }
    }
    impl Host for Ticking<'_> {
        fn now(&mut self) -> u64 {
            self.0.set(self.0.get() + 100);
            self.0.get()
        }
        fn ticks_per_second(&self) -> u64 {
            SECOND
        }
    }
    let mut w = World::new();
    let mut ram = w.ram.ram();
    let mut host = Ticking(&w.time);
    let config = VmmConfig {
        tsc_offsetting: true,
        ..Default::default()
    };
    let mut vmm = Vmm::new(Router::new(), &w.board, &mut ram, &mut host).with_config(config);
    let mut offset = 0u64;
    for _ in 0..3 {
        let exit_tsc = w.time.get();
        let r = resumed(vmm.handle(&flat(svm_exit::CPUID, 0, 0)));
        assert!(flags(&r).contains(ResumeFlags::SET_TSC_OFFSET), "{r:?}");
        let spent = offset.wrapping_sub(r.tsc_offset);
        assert!(spent > 0, "the offset moves back by the handling time");
        // The guest reads its TSC at the next entry no earlier than now.
        let entry_tsc = w.time.get().wrapping_add(r.tsc_offset);
        assert!(
            entry_tsc >= exit_tsc.wrapping_add(offset),
            "backwards: {entry_tsc} < {}",
            exit_tsc.wrapping_add(offset)
        );
        offset = r.tsc_offset;
        w.time.set(w.time.get() + 10_000); // the guest runs
    }
    drop(vmm);
    // Without the platform's offsetting, no offset is ever sent.
    let mut host = Ticking(&w.time);
    let mut vmm = Vmm::new(Router::new(), &w.board, &mut ram, &mut host);
    let r = resumed(vmm.handle(&flat(svm_exit::CPUID, 0, 0)));
    assert!(!flags(&r).contains(ResumeFlags::SET_TSC_OFFSET));
}

/// A PCI function whose server signals bit 0 and then has an MSI-X
/// message (vector 0x45) for each notification.
struct Signalling<'b> {
    irq: crate::board::PciInterrupts<'b>,
    busy: bool,
}

impl crate::devices::pci::PciFunction for Signalling<'_> {
    fn config_read(&mut self, _: u16, _: u8) -> u32 {
        0
    }
    fn config_write(&mut self, _: u16, _: u8, _: u32) {}
    fn bar_read(&mut self, _: u8, _: u64, _: u8) -> u64 {
        0
    }
    fn bar_write(&mut self, _: u8, _: u64, _: u8, _: u64) {}
    fn notified(&mut self, word: u32) {
        if word & 1 != 0 {
            self.irq.send_msi(0xfee0_0000, 0x45);
            self.busy = false;
        }
    }
    fn busy(&self) -> bool {
        self.busy
    }
}

/// A notification exit: the server's interrupt is injected at once when
/// the guest could take one at its last exit, else a window is asked for;
/// the last resume's event goes again (the stub applies each resume's
/// interrupt part afresh); when the guest ran since (for the mmu-server's
/// exits under shadow paging) only a window.
#[test]
fn a_notification_exit_delivers_the_servers_msi() {
    use crate::devices::ioapic::IoApic;
    use crate::devices::lapic::LocalApic;
    use crate::devices::pci::PciBus;
    use crate::mmio::MmioDevice;
    for guest_ran in [false, true] {
        let mut w = World::new();
        let mut f = Signalling {
            irq: w.board.irq.pci(10),
            busy: true,
        };
        let bus = PciBus::new();
        bus.add(3, 0, 10, &mut f).unwrap();
        let mut ram = w.ram.ram();
        let mut host = TestHost {
            time: &w.time,
            input: false,
            xsave: false,
        };
        let mut vmm = Vmm::new(Router::new(), &w.board, &mut ram, &mut host)
            .with_irqchip(IrqChip::pc(LocalApic::new(&w.board.clock), IoApic::new()))
            .with_pci_bus(&bus)
            .with_config(VmmConfig::default());
        vmm.irq.lapic_mut().unwrap().write(0xf0, 4, 0x1ff);
        // An exit with interrupts open.
        let mut tick = flat(svm_exit::INTR, 0, 0);
        tick.regs.rflags = 0x202;
        let r = resumed(vmm.handle(&tick));
        assert!(!flags(&r).contains(ResumeFlags::INJECT_EVENT));
        // A word for another function: nothing to deliver, nothing asked.
        let r = vmm.notified(1 << 4, guest_ran);
        assert_eq!(r.flags, 0);
        let r = vmm.notified(1, guest_ran);
        if guest_ran {
            assert_eq!(flags(&r), ResumeFlags::REQUEST_INTERRUPT_WINDOW);
            continue;
        }
        assert_eq!(flags(&r), ResumeFlags::INJECT_EVENT);
        assert_eq!(
            (r.event.vector, r.event.kind),
            (0x45, EventKind::ExternalInterrupt as u8)
        );
        // Another notification before the guest ran: the same event again.
        let again = vmm.notified(0, guest_ran);
        assert_eq!(flags(&again), ResumeFlags::INJECT_EVENT);
        assert_eq!(again.event.vector, 0x45);
        // Interrupts closed at the last exit: a window.
        vmm.irq.lapic_mut().unwrap().write(0xb0, 4, 0); // EOI
        let mut closed = flat(svm_exit::INTR, 0, 0);
        closed.regs.rflags = 0x2;
        resumed(vmm.handle(&closed));
        let r = vmm.notified(1, guest_ran);
        assert_eq!(flags(&r), ResumeFlags::REQUEST_INTERRUPT_WINDOW);
        assert_eq!(vmm.stats().notifications, 4);
    }
}

/// A HLT while a PCI function works for the guest neither warps the clock
/// nor waits: the guest goes on past the HLT (its idle loop halts again)
/// and the server runs meanwhile; the interrupt that ends the work is not
/// delivered before the HLT (the guest would sleep through it).
#[test]
fn a_halt_while_a_function_is_busy_does_not_skip_time() {
    use crate::devices::pci::PciBus;
    let mut w = World::new();
    let mut f = Signalling {
        irq: w.board.irq.pci(10),
        busy: true,
    };
    let bus = PciBus::new();
    bus.add(3, 0, 10, &mut f).unwrap();
    let mut pit = Pit::new(&w.board.clock, Some(w.board.irq.pin(0)));
    let mut r = Router::new();
    r.register_ranges(&pit::RANGES, &mut pit).unwrap();
    vmm!(vmm = w, r);
    let mut vmm = vmm.with_pci_bus(&bus);
    program_timer(&mut vmm, 0xffff);
    let mut hlt = flat(svm_exit::HLT, 0, 0);
    hlt.next_rip = RIP + 1;
    hlt.regs.rflags = 0x202;
    let before = w.board.clock.now();
    let busy_exits = vmm.stats().busy_exits;
    let r = resumed(vmm.handle(&hlt));
    assert_eq!(r.regs.rip, RIP + 1, "past the HLT");
    assert!(flags(&r).contains(ResumeFlags::SET_RIP));
    assert_eq!(w.board.clock.now(), before, "no warp");
    assert_eq!(vmm.stats().busy_halts, 1);
    assert_eq!(vmm.stats().busy_exits, busy_exits + 1);
    assert_eq!(vmm.stats().warps, 0);
    // Done: the next HLT skips to the timer as before.
    bus.notified(1);
    resumed(vmm.handle(&hlt));
    assert!(vmm.stats().warps > 0);
}
