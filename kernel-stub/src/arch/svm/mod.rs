//! AMD SVM (AMD APM vol. 2, chapter 15): the VMCB, VMRUN, and the
//! translation of an exit into an `ExitRecord`.

mod vmcb;

use super::{Entry, Paging};
use crate::cpu;
use crate::memory::{self, OutOfMemory};
use core::arch::global_asm;
use ipc_proto::manifest::EntryMode;
use ipc_proto::vcpu::svm_exit;
use ipc_proto::{
    EventKind, ExitRecord, GuestRegs, PagingState, Resume, ResumeFlags, Segment, VcpuArch,
    ABI_VERSION,
};
use kernel_stub::resume::GuestMode;
use kernel_stub::svm_intercepts::{misc1, Intercepts};
use vmcb::*;

const MSR_VM_CR: u32 = 0xc001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

/// Why SVM cannot be used on this CPU, as one sentence.
pub fn check_support() -> Result<(), &'static str> {
    if cpu::cpuid(0x8000_0000).eax < 0x8000_000a || cpu::cpuid(0x8000_0001).ecx & (1 << 2) == 0 {
        return Err("SVM not available on this CPU");
    }
    if cpu::rdmsr(MSR_VM_CR) & VM_CR_SVMDIS != 0 {
        return Err("SVM is disabled by the firmware (VM_CR.SVMDIS)");
    }
    Ok(())
}

/// Whether the CPU has nested paging (NPT, CPUID 8000_000A EDX bit 0).
pub fn has_nested_paging() -> bool {
    cpu::cpuid(0x8000_000a).edx & 1 != 0
}

/// MSRs whose guest values live in the VMCB (APM vol. 2, 15.5.1, table B-2):
/// STAR, LSTAR, CSTAR, SFMASK, FS/GS base, KernelGSBase, SYSENTER_CS/ESP/EIP.
const VMCB_MSRS: [u32; 10] = [
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0x174,
    0x175,
    0x176,
];
const MSR_EFER: u32 = 0xc000_0080;

/// Clears an MSR's read and write intercept bits in the MSR permission map
/// (APM vol. 2, 15.11: two bits per MSR, three 2 KiB ranges).
fn pass_through_msr(msrpm: u64, msr: u32) {
    let (range, base) = match msr {
        0..=0x1fff => (0, 0),
        0xc000_0000..=0xc000_1fff => (1, 0xc000_0000),
        _ => (2, 0xc001_0000),
    };
    let bit = range * 2048 * 8 + u64::from(msr - base) * 2;
    let byte = (msrpm + bit / 8) as *mut u8;
    // SAFETY: `msrpm` is the VCPU's 8 KiB permission map; `bit` < 6 KiB * 8.
    unsafe { byte.write(byte.read() & !(0b11 << (bit % 8))) };
}

/// Whether the CPU reports the next RIP on exits (NRIPS, CPUID 8000_000A EDX bit 3).
fn has_nrips() -> bool {
    cpu::cpuid(0x8000_000a).edx & (1 << 3) != 0
}

/// One virtual CPU: its VMCB, the registers VMRUN does not save, and the
/// host areas VMRUN and VMLOAD use.
pub struct Vcpu {
    vmcb: Vmcb,
    /// RBX..R15 of the guest (RAX, RSP, RIP and RFLAGS live in the VMCB).
    gprs: GuestRegs,
    /// The host's FS, GS, TR, LDTR and syscall MSRs (VMSAVE format).
    host_vmsave_pa: u64,
    nrips: bool,
    sequence: u64,
    shadow: bool,
    /// What `create_vcpu` intercepts: any other exit code is a failed entry.
    intercepts: Intercepts,
    /// External interrupts go in as virtual interrupts (see `apply`).
    pub virtual_interrupts: bool,
    /// The vector `apply` offered as a virtual interrupt for the next run.
    offered_irq: Option<u8>,
    /// Its ASID is another VM's too (`create_vcpu`).
    asid_shared: bool,
}

/// Enables SVM on this CPU: EFER.SVME and its host save area (APM vol. 2,
/// 15.4 and 15.30.4), which VMRUN and the exits use.
pub fn enable() -> Result<(), OutOfMemory> {
    cpu::wrmsr(cpu::MSR_EFER, cpu::rdmsr(cpu::MSR_EFER) | cpu::EFER_SVME);
    cpu::wrmsr(MSR_VM_HSAVE_PA, memory::alloc_frame()?);
    Ok(())
}

/// Enables SVM and builds a VCPU translating guest memory as `paging`
/// says, starting in the state `entry` describes.
pub fn create_vcpu(paging: Paging, entry: &Entry, asid: u32) -> Result<Vcpu, OutOfMemory> {
    enable()?;
    let host_vmsave_pa = memory::alloc_frame()?;
    // SAFETY: EFER.SVME is set and the frame is ours; VMSAVE stores the
    // current FS/GS/TR/LDTR/syscall state there, to be reloaded after each exit.
    unsafe { core::arch::asm!("vmsave rax", in("rax") host_vmsave_pa, options(nostack)) };

    // Every port is intercepted; so is every MSR but those the VMCB holds
    // (loaded and saved with the guest: nothing of the host's to protect)
    // and, with nested paging, EFER (the VMCB holds it too; a shadow MMU
    // must see its writes), and TSC_AUX where the host has RDTSCP.
    let iopm = memory::alloc(3, memory::PAGE)?;
    let msrpm = memory::alloc(2, memory::PAGE)?;
    // SAFETY: both ranges were just allocated for these bitmaps.
    unsafe {
        core::ptr::write_bytes(iopm as *mut u8, 0xff, 3 * 4096);
        core::ptr::write_bytes(msrpm as *mut u8, 0xff, 2 * 4096);
    }
    let nested = matches!(paging, Paging::Nested);
    let rdtscp = cpu::has_rdtscp();
    let own = [
        nested.then_some(MSR_EFER),
        rdtscp.then_some(cpu::MSR_TSC_AUX),
    ];
    for msr in VMCB_MSRS.iter().copied().chain(own.into_iter().flatten()) {
        pass_through_msr(msrpm, msr);
    }

    let shadow = matches!(paging, Paging::Shadow);
    let intercepts = Intercepts::for_mode(shadow, rdtscp);
    let mut v = Vmcb::new(memory::alloc_frame()?);
    v.write32(INTERCEPT_CR, intercepts.cr);
    v.write32(INTERCEPT_EXCEPTIONS, intercepts.exceptions);
    v.write32(INTERCEPT_MISC1, intercepts.misc1);
    v.write32(INTERCEPT_MISC2, intercepts.misc2);
    v.write64(IOPM_BASE_PA, iopm);
    v.write64(MSRPM_BASE_PA, msrpm);
    // ASIDs below NASID (CPUID 8000_000A EBX) are legal; VMRUN refuses
    // others. On a CPU with too few the VMs share ASID 1, flushed at each
    // VM's turn (`load`).
    let asid_shared = asid >= cpu::cpuid(0x8000_000a).ebx;
    v.write32(GUEST_ASID, if asid_shared { 1 } else { asid });
    v.write8(TLB_CONTROL, 1); // flush this ASID on the first VMRUN
                              // nCR3 comes with the mmu-server's SET_NESTED_ROOT.
    v.write64(NP_ENABLE, u64::from(!shadow));

    let (code, data, cr0) = match entry.mode {
        // Flat: base 0, limit 4 GiB, 32-bit, present; CR0 = PE | ET.
        EntryMode::Flat32 => (
            seg(0x08, 0xc9b, 0xffff_ffff),
            seg(0x10, 0xc93, 0xffff_ffff),
            0x11,
        ),
        // Real mode: 64 KiB segments at 0; CR0 = ET. SVM runs it natively.
        EntryMode::Real16 => (seg(0, 0x9b, 0xffff), seg(0, 0x93, 0xffff), 0x10),
    };
    for s in [ES, SS, DS, FS, GS] {
        v.write_segment(s, data);
    }
    v.write_segment(CS, code);
    v.write_segment(GDTR, seg(0, 0, 0xffff));
    v.write_segment(IDTR, seg(0, 0, 0xffff));
    v.write_segment(LDTR, seg(0, 0x82, 0xffff));
    v.write_segment(TR, seg(0, 0x8b, 0xffff));
    v.write64(CR0, cr0);
    v.write64(EFER, cpu::EFER_SVME); // VMRUN requires the guest's EFER.SVME
    v.write64(RFLAGS, 2);
    v.write64(RIP, entry.rip);
    v.write64(RAX, entry.rax);
    v.write64(DR6, 0xffff_0ff0);
    v.write64(DR7, 0x400);
    v.write64(G_PAT, 0x0007_0406_0007_0406); // the power-on PAT
    v.write64(V_INTR, V_INTR_MASKING);

    let gprs = GuestRegs {
        rbx: entry.rbx,
        rsi: entry.rsi,
        // A BIOS boots from the first hard disk with DL = 0x80.
        rdx: if entry.mode == EntryMode::Real16 {
            0x80
        } else {
            0
        },
        ..GuestRegs::default()
    };
    Ok(Vcpu {
        vmcb: v,
        gprs,
        host_vmsave_pa,
        nrips: has_nrips(),
        sequence: 0,
        shadow,
        intercepts,
        virtual_interrupts: false,
        offered_irq: None,
        asid_shared,
    })
}

/// Whether a virtual interrupt offered at VMRUN (V_IRQ, APM vol. 2 15.21.4)
/// reaches a guest with IF set. Bochs 2.7 holds it back until the guest
/// sets IF itself (it unmasks the event only on an IF change in guest
/// mode); there external interrupts go through EVENTINJ. Probed with a
/// guest whose IDT sends vector 0x20 to a HLT of its own, beside the HLT it
/// starts at: the HLT exit's RIP says which ran.
pub fn virtual_interrupts_delivered() -> Result<bool, OutOfMemory> {
    let page = memory::alloc_frame()?;
    let (handler, idt, gdt) = (page + 8, page + 0xc00, page + 0x800);
    let gate = (handler & 0xffff) | 0x08 << 16 | 0x8e00 << 32 | (handler >> 16 & 0xffff) << 48;
    // SAFETY: a fresh identity-mapped frame of the stub; every offset is
    // inside it.
    unsafe {
        (page as *mut u8).write(0xf4); // hlt
        (handler as *mut u8).write(0xf4); // hlt
        ((gdt + 8) as *mut u64).write(0x00cf_9b00_0000_ffff); // 0x08: flat 32-bit code
        ((idt + 8 * 0x20) as *mut u64).write(gate);
    }
    let mut probe = probe_vcpu(page)?;
    let v = &mut probe.vmcb;
    v.write_segment(
        GDTR,
        Segment {
            base: gdt,
            ..seg(0, 0, 15)
        },
    );
    v.write_segment(
        IDTR,
        Segment {
            base: idt,
            ..seg(0, 0, 8 * 0x21 - 1)
        },
    );
    v.write64(RSP, page + 0xff0);
    v.write64(RFLAGS, 0x202);
    v.write64(
        V_INTR,
        V_INTR_MASKING | V_IRQ | V_INTR_PRIO_MAX | V_IGN_TPR | 0x20 << V_INTR_VECTOR_SHIFT,
    );
    Ok(probe
        .run_probe()
        .is_some_and(|rec| rec.exit_code == svm_exit::HLT && rec.regs.rip == handler))
}

/// Whether this CPU exits on a task switch when the intercept asks for it
/// (APM vol. 2, 15.14.1). QEMU 7.2's TCG performs the switch instead, which
/// under shadow paging loads a guest-chosen host-physical CR3. Probed with
/// a guest of the stub's own, paging off, whose only instruction is a far
/// jump to a second TSS (whose EIP is a HLT): a task-switch exit says yes,
/// anything else no.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the probe's page is a stub frame, in the first GiB; five descriptors"
)]
pub fn task_switch_exits() -> Result<bool, OutOfMemory> {
    let page = memory::alloc_frame()?;
    let (gdt, tss_old, tss_new, hlt) = (page + 0x800, page + 0x900, page + 0xa00, page + 7);
    let tss_descriptor = |base: u64, busy: bool| {
        0x67 | (base & 0xff_ffff) << 16
            | (if busy { 0x8b } else { 0x89 }) << 40
            | (base >> 24) << 56
    };
    let descriptors = [
        0,
        0x00cf_9b00_0000_ffff, // 0x08: flat 32-bit code
        0x00cf_9300_0000_ffff, // 0x10: flat data
        tss_descriptor(tss_old, true),
        tss_descriptor(tss_new, false),
    ];
    let code = [0xea, 0, 0, 0, 0, 0x20, 0x00, 0xf4]; // ljmp 0x20:0; hlt
                                                     // 32-bit TSS fields (APM vol. 2, 12.2.5): EIP, EFLAGS, ESP, ES..GS.
    let tss_fields: [(u64, u32); 9] = [
        (0x20, hlt as u32),
        (0x24, 2),
        (0x38, (page + 0xff0) as u32),
        (0x48, 0x10),
        (0x4c, 0x08),
        (0x50, 0x10),
        (0x54, 0x10),
        (0x58, 0x10),
        (0x5c, 0x10),
    ];
    // SAFETY: a fresh identity-mapped frame of the stub; every offset is
    // inside it.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), page as *mut u8, code.len());
        for (i, d) in descriptors.iter().enumerate() {
            ((gdt + 8 * i as u64) as *mut u64).write(*d);
        }
        for (off, v) in tss_fields {
            ((tss_new + off) as *mut u32).write(v);
        }
    }
    let mut probe = probe_vcpu(page)?;
    let v = &mut probe.vmcb;
    v.write_segment(
        GDTR,
        Segment {
            base: gdt,
            ..seg(0, 0, 8 * descriptors.len() as u32 - 1)
        },
    );
    // No IDT: a fault in the switch is a triple fault (a SHUTDOWN exit).
    v.write_segment(IDTR, seg(0, 0, 0));
    v.write_segment(
        TR,
        Segment {
            base: tss_old,
            ..seg(0x18, 0x8b, 0x67)
        },
    );
    Ok(probe
        .run_probe()
        .is_some_and(|rec| rec.exit_code == svm_exit::TASK_SWITCH))
}

/// A VCPU for a boot probe's own guest: flat 32-bit at `page`, paging off
/// (the stub's frames, identity-mapped).
fn probe_vcpu(page: u64) -> Result<Vcpu, OutOfMemory> {
    let entry = Entry {
        mode: EntryMode::Flat32,
        rip: page,
        rax: 0,
        rbx: 0,
        rsi: 0,
    };
    create_vcpu(Paging::Shadow, &entry, 1)
}

/// A segment with base 0.
const fn seg(selector: u16, attrib: u16, limit: u32) -> Segment {
    Segment {
        selector,
        attrib,
        limit,
        base: 0,
    }
}

global_asm!(
    // fn svm_vmrun(vmcb_pa: u64 /* rdi */, gprs: *mut GuestRegs /* rsi */, host_vmsave_pa: u64 /* rdx */)
    // VMRUN saves and restores only RAX, RSP and RIP of the host; the other
    // general-purpose registers are swapped here by hand.
    ".globl svm_vmrun",
    "svm_vmrun:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdx",
    "push rsi",
    "push rdi",
    "mov rax, rsi",
    "mov rbx, [rax + 8]",
    "mov rcx, [rax + 16]",
    "mov rdx, [rax + 24]",
    "mov rsi, [rax + 32]",
    "mov rdi, [rax + 40]",
    "mov rbp, [rax + 48]",
    "mov r8, [rax + 64]",
    "mov r9, [rax + 72]",
    "mov r10, [rax + 80]",
    "mov r11, [rax + 88]",
    "mov r12, [rax + 96]",
    "mov r13, [rax + 104]",
    "mov r14, [rax + 112]",
    "mov r15, [rax + 120]",
    "mov rax, [rsp]",
    // Host IF set at VMRUN lets a host interrupt (the exit deadline's
    // timer) end the guest's run as an INTR exit (APM 15.21.1); GIF keeps
    // it from reaching the stub's IDT here and after the exit.
    "clgi",
    "sti",
    "vmload rax",
    "vmrun rax",
    "vmsave rax",
    "mov rax, [rsp + 8]",
    "mov [rax + 8], rbx",
    "mov [rax + 16], rcx",
    "mov [rax + 24], rdx",
    "mov [rax + 32], rsi",
    "mov [rax + 40], rdi",
    "mov [rax + 48], rbp",
    "mov [rax + 64], r8",
    "mov [rax + 72], r9",
    "mov [rax + 80], r10",
    "mov [rax + 88], r11",
    "mov [rax + 96], r12",
    "mov [rax + 104], r13",
    "mov [rax + 112], r14",
    "mov [rax + 120], r15",
    "mov rax, [rsp + 16]",
    "vmload rax",
    "cli",
    "stgi",
    "add rsp, 24",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
);

extern "C" {
    fn svm_vmrun(vmcb_pa: u64, gprs: *mut GuestRegs, host_vmsave_pa: u64);
}

impl Vcpu {
    /// Runs a boot probe's guest to its first exit that is not a host
    /// interrupt (each acknowledged and run again); `None` after eight.
    fn run_probe(&mut self) -> Option<ExitRecord> {
        for _ in 0..8 {
            let rec = self.run();
            if rec.exit_code != svm_exit::INTR {
                return Some(rec);
            }
            crate::deadline::acknowledge();
        }
        None
    }

    /// Runs the guest until its next exit and describes the exit.
    pub fn run(&mut self) -> ExitRecord {
        // Bochs 2.7's VMRUN reads the VMCB's CR2 and drops it (APM vol. 2,
        // 15.5.1 has VMRUN load it), so the guest would see the host's CR2.
        let cr2 = self.vmcb.read64(CR2);
        // Under nested paging the guest writes EFER without an exit; VMRUN
        // fails when SVME is clear (APM vol. 2, 15.5.1), so it stays set.
        let efer = self.vmcb.read64(EFER);
        self.vmcb.write64(EFER, efer | cpu::EFER_SVME);
        // SAFETY: any value may be written to CR2; the host reads it only in fault messages.
        unsafe { core::arch::asm!("mov cr2, {}", in(reg) cr2, options(nostack, preserves_flags)) };
        let entered_at = (self.vmcb.read64(RIP), self.vmcb.read64(RSP));
        // SAFETY: the VMCB, the host areas and the bitmaps are frames this
        // VCPU owns; `svm_vmrun` preserves every callee-saved register and
        // returns on #VMEXIT (a failed consistency check is an exit too).
        unsafe { svm_vmrun(self.vmcb.pa(), &mut self.gprs, self.host_vmsave_pa) };
        self.vmcb.write8(TLB_CONTROL, 0);
        self.vmcb.write64(EVENTINJ, 0);
        self.sequence += 1;
        let rec = self.exit_record(entered_at);
        self.offered_irq = None;
        rec
    }

    /// The exit, for a run entered at `entered_at` (RIP, RSP).
    fn exit_record(&self, entered_at: (u64, u64)) -> ExitRecord {
        let v = &self.vmcb;
        let mut regs = self.gprs;
        regs.rax = v.read64(RAX);
        regs.rsp = v.read64(RSP);
        regs.rip = v.read64(RIP);
        regs.rflags = v.read64(RFLAGS);
        let exit_code = v.read64(EXITCODE);
        let insn_len = v.read8(INSN_LEN).min(15);
        let mut insn_bytes = [0u8; 16];
        for (i, b) in insn_bytes
            .iter_mut()
            .enumerate()
            .take(usize::from(insn_len))
        {
            *b = v.read8(INSN_BYTES + i);
        }
        ExitRecord {
            abi_version: ABI_VERSION,
            arch: VcpuArch::Svm as u32,
            sequence: self.sequence,
            exit_code,
            exit_info1: v.read64(EXITINFO1),
            exit_info2: v.read64(EXITINFO2),
            exit_int_info: self.undelivered_event(exit_code, entered_at),
            next_rip: match (self.nrips, exit_code) {
                (true, _) => v.read64(NRIP),
                // Without NRIPS, an IOIO exit still gives the next RIP in EXITINFO2 (APM 15.10.2).
                (false, ipc_proto::vcpu::svm_exit::IOIO) => v.read64(EXITINFO2),
                (false, _) => 0,
            },
            regs,
            cr0: v.read64(CR0),
            cr2: v.read64(CR2),
            cr3: v.read64(CR3),
            cr4: v.read64(CR4),
            efer: v.read64(EFER),
            cs: v.read_segment(CS),
            cpl: v.read8(CPL),
            interrupt_shadow: (v.read64(INTERRUPT_SHADOW) & 1) as u8,
            insn_len,
            reserved: [0; 5],
            insn_bytes,
        }
    }

    /// EXITINTINFO, or else an external interrupt `apply` offered as a
    /// virtual interrupt that the guest has not taken (an exit came first):
    /// to the servers both are an event whose delivery the exit
    /// interrupted, which they inject again. Not taken means V_IRQ still
    /// set, an exit that comes between instructions (a physical interrupt,
    /// NMI, SMI or INIT: any other needs an instruction, and the interrupt
    /// comes before the first) and the guest still where it was entered (a
    /// delivery moves RSP).
    fn undelivered_event(&self, exit_code: u64, entered_at: (u64, u64)) -> u64 {
        let v = &self.vmcb;
        let info = v.read64(EXITINTINFO);
        let Some(vector) = self.offered_irq.map(u64::from) else {
            return info;
        };
        if info & EVENT_VALID != 0 {
            // QEMU 7.2 records the interrupted delivery of a virtual
            // interrupt as an exception (type 3) of its vector.
            let ours = (info >> 8) & 7 == 3 && info & 0xff == vector;
            return if ours { EVENT_VALID | vector } else { info };
        }
        let taken = v.read64(V_INTR) & V_IRQ == 0;
        let between_instructions = (svm_exit::INTR..=svm_exit::INTR + 3).contains(&exit_code);
        let unmoved = (v.read64(RIP), v.read64(RSP)) == entered_at;
        if !taken && between_instructions && unmoved {
            EVENT_VALID | vector
        } else {
            0
        }
    }

    /// What the resume check needs to know of the guest's state.
    pub fn mode(&self) -> GuestMode {
        const EFER_LMA: u64 = 1 << 10;
        let cs = self.vmcb.read_segment(CS).attrib;
        GuestMode {
            lma: self.vmcb.read64(EFER) & EFER_LMA != 0,
            cs_l: cs & Segment::ATTR_L != 0,
            cs_d: cs & Segment::ATTR_DB != 0,
            rflags: self.vmcb.read64(RFLAGS),
            interrupt_shadow: self.vmcb.read64(INTERRUPT_SHADOW) & 1 != 0,
            shadow: self.shadow,
        }
    }

    /// Whether `rec` is an exit the intercepts allow; anything else (a
    /// failed VMRUN in any width, an unknown code) ended no guest run.
    pub fn entry_failed(&self, rec: &ExitRecord) -> bool {
        !self.intercepts.expects(rec.exit_code)
    }

    /// Flushes this guest's TLB entries at the next entry.
    pub fn flush_tlb(&mut self) {
        self.flush(TLB_FLUSH_GUEST);
    }

    /// Turns the PAUSE intercept on or off for the next entries (the
    /// scheduler's, `vm`). An intercepted PAUSE exits before it executes
    /// (APM vol. 2, 15.14.4 with a pause filter count of 0), so the
    /// guest is entered again as it was.
    pub fn set_pause_exiting(&mut self, on: bool) {
        self.set_misc1(misc1::PAUSE, on);
    }

    /// Its VM's turn: a shared ASID holds another VM's translations.
    pub fn load(&mut self) {
        if self.asid_shared {
            self.flush(1);
        }
    }

    /// Turns the INVLPG intercept on or off (shadow paging: what the
    /// mmu-server's `SET_PAGING` asks for with
    /// `PagingState::INTERCEPT_INVLPG`).
    fn set_invlpg_exiting(&mut self, on: bool) {
        self.set_misc1(misc1::INVLPG, on);
    }

    /// Sets or clears one of the intercepts that change between entries,
    /// in the VMCB and in what `Intercepts::expects` checks exits against.
    fn set_misc1(&mut self, bit: u32, on: bool) {
        let bits = if on { bit } else { 0 };
        if self.intercepts.misc1 & bit != bits {
            self.intercepts.misc1 = self.intercepts.misc1 & !bit | bits;
            let other = self.vmcb.read32(INTERCEPT_MISC1) & !bit;
            self.vmcb.write32(INTERCEPT_MISC1, other | bits);
        }
    }

    /// Asks for a `kind` flush at the next entry; a wider one already
    /// asked for stays (1 everything, 3 this guest, 7 its non-global entries).
    fn flush(&mut self, kind: u8) {
        let pending = self.vmcb.read8(TLB_CONTROL);
        if pending == 0 || pending == TLB_FLUSH_GUEST_NON_GLOBAL {
            self.vmcb.write8(TLB_CONTROL, kind);
        }
    }

    /// Applies a resume that `resume::validate` accepted with `flags`;
    /// `root` is the host-physical frame of `r.paging.root`, checked by
    /// `resume::validate_paging` (`SET_PAGING`) or
    /// `resume::validate_nested_root` (`SET_NESTED_ROOT`).
    pub fn apply(&mut self, r: &Resume, flags: ResumeFlags, root: Option<u64>) {
        let set_paging = flags.contains(ResumeFlags::SET_PAGING);
        if set_paging && !self.shadow {
            // Nested: the guest's CR4 (`validate_nested_cr4`); a change of
            // PGE, PSE, PAE or SMEP drops its translations.
            self.vmcb.write64(CR4, r.paging.cr4);
            self.flush_tlb();
        }
        if let (true, true, Some(root)) = (set_paging, self.shadow, root) {
            self.vmcb.write64(CR0, r.paging.cr0);
            self.vmcb.write64(CR4, r.paging.cr4);
            self.vmcb.write64(EFER, r.paging.efer | cpu::EFER_SVME);
            self.vmcb.write64(CR3, root);
            self.set_invlpg_exiting(r.paging.flags & PagingState::INTERCEPT_INVLPG != 0);
            self.flush(if flags.contains(ResumeFlags::FLUSH_NON_GLOBAL) {
                TLB_FLUSH_GUEST_NON_GLOBAL
            } else {
                TLB_FLUSH_GUEST
            });
        }
        if let (true, Some(root)) = (flags.contains(ResumeFlags::SET_NESTED_ROOT), root) {
            self.vmcb.write64(N_CR3, root);
            self.flush_tlb();
        }
        if flags.contains(ResumeFlags::SET_CR2) {
            self.vmcb.write64(CR2, r.cr2);
        }
        if flags.contains(ResumeFlags::SET_TSC_OFFSET) {
            self.vmcb.write64(TSC_OFFSET, r.tsc_offset);
        }
        let v = &mut self.vmcb;
        if flags.contains(ResumeFlags::SET_GPRS) {
            let rip = self.gprs.rip;
            self.gprs = r.regs;
            self.gprs.rip = rip;
            v.write64(RAX, r.regs.rax);
            v.write64(RSP, r.regs.rsp);
        }
        if flags.contains(ResumeFlags::SET_RIP) {
            v.write64(RIP, r.regs.rip);
            // The instruction that set the shadow (STI, MOV SS) is behind.
            v.write64(INTERRUPT_SHADOW, 0);
        }
        if flags.contains(ResumeFlags::SET_RFLAGS) {
            v.write64(RFLAGS, r.regs.rflags);
        }
        // An external interrupt goes in as a virtual interrupt, which the
        // guest takes at once (`validate` checked IF and the shadow), not
        // through EVENTINJ: QEMU's VMRUN (7.2, TCG) leaves an EVENTINJ
        // interrupt's vector as its pending exception, and delivers it a
        // second time, IF clear, when its I/O thread interrupts the vCPU
        // before the guest's next exception or exit (Debian's i386 kernel
        // deadlocked in its timer handler).
        let inject = flags.contains(ResumeFlags::INJECT_EVENT);
        let irq = (inject
            && self.virtual_interrupts
            && r.event.kind == EventKind::ExternalInterrupt as u8)
            .then_some(r.event.vector);
        // Without one, a virtual interrupt that the guest takes as soon as
        // it can makes the VINTR intercept fire at the start of the
        // interrupt window.
        self.offered_irq = irq;
        let window = flags.contains(ResumeFlags::REQUEST_INTERRUPT_WINDOW) && irq.is_none();
        let misc1 = v.read32(INTERCEPT_MISC1) & !misc1::VINTR;
        v.write32(
            INTERCEPT_MISC1,
            misc1 | if window { misc1::VINTR } else { 0 },
        );
        // V_INTR_MASKING: the guest's IF masks only virtual interrupts;
        // physical ones stay with the host (whose IF is clear).
        let v_irq = match irq {
            Some(vector) => {
                V_IRQ | V_INTR_PRIO_MAX | V_IGN_TPR | u64::from(vector) << V_INTR_VECTOR_SHIFT
            }
            None if window => V_IRQ | V_INTR_PRIO_MAX | V_IGN_TPR,
            None => 0,
        };
        v.write64(V_INTR, V_INTR_MASKING | v_irq);
        if inject && irq.is_none() {
            let e = &r.event;
            let ev = u64::from(e.has_error_code & 1) << 11;
            v.write64(
                EVENTINJ,
                u64::from(e.vector)
                    | u64::from(e.kind) << 8
                    | ev
                    | EVENT_VALID
                    | u64::from(e.error_code) << 32,
            );
        }
    }
}
