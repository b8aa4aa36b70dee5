//! The VCPU on seL4: `seL4_VMEnter` in, `ipc_proto::ExitRecord` out (the
//! same record the native stub's VMX code writes, `arch` = VMX), and a
//! `Resume` applied with the VCPU's WriteRegisters and WriteVMCS.
//!
//! What an exit costs: seL4 returns the reason, qualification, instruction
//! length, guest-physical address, RFLAGS, interruptibility, CR3 and the
//! general registers but RSP in message registers; the rest of the record
//! takes one `ReadVMCS` call each, made only for the exits whose handling
//! needs the field (`sel4_vmm_server::exit_reads`; see [`Vcpu::record`]),
//! CR0 at most once per exit ([`Vcpu::cr0`]).

use ipc_proto::exit::vmx_exit;
use ipc_proto::{ErrorCode, ExitKind, ExitRecord, Resume, ResumeFlags, Segment, Stats, VcpuArch};
use sel4_sys::{c, invoke, CPtr, VmEnter};
use vmm_server::Stub;

/// VMCS field encodings (Intel SDM vol. 3D, appendix B).
#[allow(missing_docs)]
pub mod field {
    pub const GUEST_ES_SELECTOR: u64 = 0x0800;
    pub const GUEST_EFER: u64 = 0x2806;
    pub const PIN_CONTROLS: u64 = 0x4000;
    pub const PROC_CONTROLS: u64 = 0x4002;
    pub const EXIT_CONTROLS: u64 = 0x400c;
    pub const ENTRY_CONTROLS: u64 = 0x4012;
    pub const ENTRY_EXCEPTION_ERROR_CODE: u64 = 0x4018;
    pub const PROC2_CONTROLS: u64 = 0x401e;
    pub const EXIT_INTERRUPTION_INFO: u64 = 0x4404;
    pub const EXIT_INTERRUPTION_ERROR_CODE: u64 = 0x4406;
    pub const IDT_VECTORING_INFO: u64 = 0x4408;
    pub const IDT_VECTORING_ERROR_CODE: u64 = 0x440a;
    pub const GUEST_ES_LIMIT: u64 = 0x4800;
    pub const GUEST_GDTR_LIMIT: u64 = 0x4810;
    pub const GUEST_IDTR_LIMIT: u64 = 0x4812;
    pub const GUEST_ES_AR: u64 = 0x4814;
    pub const GUEST_INTERRUPTIBILITY: u64 = 0x4824;
    pub const GUEST_ACTIVITY: u64 = 0x4826;
    pub const GUEST_PREEMPTION_TIMER: u64 = 0x482e;
    pub const CR0_MASK: u64 = 0x6000;
    pub const CR4_MASK: u64 = 0x6002;
    pub const CR0_READ_SHADOW: u64 = 0x6004;
    pub const CR4_READ_SHADOW: u64 = 0x6006;
    pub const GUEST_LINEAR_ADDRESS: u64 = 0x640a;
    pub const GUEST_CR0: u64 = 0x6800;
    pub const GUEST_CR3: u64 = 0x6802;
    pub const GUEST_CR4: u64 = 0x6804;
    pub const GUEST_ES_BASE: u64 = 0x6806;
    pub const GUEST_GDTR_BASE: u64 = 0x6816;
    pub const GUEST_IDTR_BASE: u64 = 0x6818;
    pub const GUEST_DR7: u64 = 0x681a;
    pub const GUEST_RSP: u64 = 0x681c;
    pub const GUEST_RFLAGS: u64 = 0x6820;
    pub const GUEST_SYSENTER_CS: u64 = 0x482a;
    pub const GUEST_SYSENTER_ESP: u64 = 0x6824;
    pub const GUEST_SYSENTER_EIP: u64 = 0x6826;
    /// Segment register numbers: field = base + 2 * n.
    pub const ES: u64 = 0;
    pub const CS: u64 = 1;
    pub const SS: u64 = 2;
    pub const DS: u64 = 3;
    pub const FS: u64 = 4;
    pub const GS: u64 = 5;
    pub const LDTR: u64 = 6;
    pub const TR: u64 = 7;
}

/// Primary processor-based controls: interrupt-window exiting, HLT exiting.
const PROC_INTERRUPT_WINDOW: u64 = 1 << 2;
const PROC_HLT_EXITING: u64 = 1 << 7;
/// Pin-based controls: activate the VMX-preemption timer.
const PIN_PREEMPTION_TIMER: u64 = 1 << 6;
/// Exit reason: the VMX-preemption timer expired.
const REASON_PREEMPTION_TIMER: u64 = 52;
/// VM-exit controls: save the VMX-preemption timer's value. seL4 handles
/// host interrupts that exit the guest itself and re-enters it; without
/// this each re-entry restarts the timer from the value written last, and
/// a deadline further away than seL4's timer tick (2 ms) never comes.
const EXIT_SAVE_PREEMPTION_TIMER: u64 = 1 << 22;
/// Secondary controls: unrestricted guest.
const PROC2_UNRESTRICTED_GUEST: u64 = 1 << 7;
/// VM-entry controls: IA-32e mode guest, load IA32_EFER.
const ENTRY_IA32E_MODE: u64 = 1 << 9;
const ENTRY_LOAD_EFER: u64 = 1 << 15;
const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
/// EFER: LME, LMA.
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Access rights (SDM 24.4.1).
const AR_CODE32: u64 = 0xc09b;
const AR_DATA32: u64 = 0xc093;
const AR_CODE16: u64 = 0x9b;
const AR_DATA16: u64 = 0x93;
const AR_TSS_BUSY: u64 = 0x8b;
const AR_UNUSABLE: u64 = 1 << 16;

/// Exit reasons with a valid instruction length (the native stub's
/// `exit_has_instruction_length`, SDM vol. 3C, 28.2.4).
const INSTRUCTION_EXITS: u64 = ((1 << 33) - (1 << 10))
    | (1 << 36)
    | (1 << 39)
    | (1 << 40)
    | (0b11 << 46)
    | (0b11 << 50)
    | (0b111 << 53)
    | (0b11_1110 << 56)
    | (1 << 63);

/// A VCPU invocation failed.
#[derive(Clone, Copy, Debug)]
pub struct VcpuError {
    /// What was invoked.
    pub what: &'static str,
    /// The VMCS field, when there is one.
    pub field: u64,
    /// seL4's error number.
    pub code: u64,
}

impl core::fmt::Display for VcpuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "seL4 refused {} (field {:#x}): error {}",
            self.what, self.field, self.code
        )
    }
}

/// The processor mode as the last exit that read it did (see [`Vcpu::record`]).
#[derive(Clone, Copy, Debug)]
struct Mode {
    rsp: u64,
    cr0: u64,
    cr4: u64,
    efer: u64,
    cs: Segment,
    cpl: u8,
}

/// The VCPU capability with the state the vmm-server keeps for it.
pub struct Vcpu {
    cap: CPtr,
    /// Primary processor-based controls as seL4 set them, plus HLT exiting.
    proc_controls: u64,
    /// The CR0/CR4 bits the guest does not own, and what it reads for them.
    cr0_mask: u64,
    cr0_shadow: u64,
    cr4_mask: u64,
    cr4_shadow: u64,
    cr4_fixed: u64,
    /// RIP for the next VMEnter, and the entry's interruption information.
    rip: u64,
    entry_info: u64,
    interrupt_window: bool,
    /// The mode the exits that need none reuse; `None` until the first
    /// exit and after a resume writes RSP, EFER or CR4.
    mode: Option<Mode>,
    /// GUEST_CR0 if this exit has read it (`record` forgets it): the one
    /// field read in more than one place (the mode, EFER.LMA, whether an
    /// injected exception pushes an error code).
    exit_cr0: Option<u64>,
    /// EFER as last written (SCE, LME, NXE): only a WRMSR exit changes
    /// them; LMA is LME and CR0.PG (see [`Vcpu::record`]).
    efer: u64,
    /// The last exit's record (its registers decide what a resume changes).
    last: ExitRecord,
    /// The last exit's interruptibility (MR), to clear STI/MOV SS blocking.
    interruptibility: u64,
    /// The exit deadline (host TSC, 0: none) and the VMX-preemption timer
    /// that keeps it: pin controls, whether the timer is on, its rate
    /// (TSC cycles per count = 2^shift, learnt from its exits; the rate
    /// is in IA32_VMX_MISC, which user level cannot read), and the last
    /// arming (TSC at entry, count).
    deadline: u64,
    pin_controls: u64,
    exit_controls: u64,
    timer_on: bool,
    timer_shift: u32,
    timer_missing: bool,
    timer_rate_known: bool,
    cr2_said: bool,
    armed: (u64, u64),
    sequence: u64,
    stats: Stats,
    /// ReadVMCS calls for the last exit, and in total.
    pub reads_last: u64,
    pub reads_total: u64,
    pub writes_total: u64,
    /// A failed entry or a refused invocation ends the run.
    pub failure: Option<VcpuError>,
    /// The mmu-server component's endpoint and the guest RAM it serves
    /// (see [`Vcpu::forward_ept`]); 0 bytes: nothing is forwarded.
    mmu: CPtr,
    ram: u64,
    /// EPT violations forwarded to the mmu-server.
    pub ept_forwarded: u64,
}

impl Vcpu {
    /// `seL4_X86_VCPU_ReadVMCS`.
    pub fn read(&mut self, field: u64) -> Result<u64, VcpuError> {
        self.reads_last += 1;
        self.reads_total += 1;
        invoke(self.cap, c::X86_VCPU_READ_VMCS, &[], &[field])
            .map(|r| r[0])
            .map_err(|e| VcpuError {
                what: "VCPU ReadVMCS",
                field,
                code: e.code,
            })
    }

    /// `seL4_X86_VCPU_WriteVMCS`.
    pub fn write(&mut self, field: u64, value: u64) -> Result<(), VcpuError> {
        self.writes_total += 1;
        invoke(self.cap, c::X86_VCPU_WRITE_VMCS, &[], &[field, value])
            .map(|_| ())
            .map_err(|e| VcpuError {
                what: "VCPU WriteVMCS",
                field,
                code: e.code,
            })
    }

    /// A VMCS field of the current exit; a refused read ends the run
    /// (`failure`), 0.
    fn field(&mut self, field: u64) -> u64 {
        match self.read(field) {
            Ok(v) => v,
            Err(e) => {
                self.failure.get_or_insert(e);
                0
            }
        }
    }

    /// GUEST_CR0 at this exit: read on first use, then kept for the exit.
    fn guest_cr0(&mut self) -> u64 {
        match self.exit_cr0 {
            Some(v) => v,
            None => {
                let v = self.field(field::GUEST_CR0);
                self.exit_cr0 = Some(v);
                v
            }
        }
    }

    /// The guest's CR0 at this exit (its view: the read shadow's bits
    /// where it does not own them).
    fn cr0(&mut self) -> u64 {
        let cr0 = self.guest_cr0();
        (cr0 & !self.cr0_mask) | (self.cr0_shadow & self.cr0_mask)
    }

    /// EFER at this exit: seL4 saves it on exit, but its bits but LMA are
    /// the last WRMSR's and LMA is LME and CR0.PG (the processor sets it
    /// when paging is turned on with LME, and LME cannot change while
    /// paging is on), so it costs no `ReadVMCS` of its own.
    fn efer_now(&mut self) -> u64 {
        let pg = self.guest_cr0() & CR0_PG != 0;
        let lma = if pg && self.efer & EFER_LME != 0 {
            EFER_LMA
        } else {
            0
        };
        (self.efer & !EFER_LMA) | lma
    }

    /// Sets the guest's initial state in the VCPU `cap` (bound to the
    /// calling thread by the root task) as the native stub's VMX code does: flat 32-bit
    /// protected mode or real mode, paging off, EPT and unrestricted guest,
    /// registers from the manifest.
    pub fn new(
        cap: CPtr,
        mode: ipc_proto::manifest::EntryMode,
        rip: u64,
        regs: [u64; 3],
    ) -> Result<Self, VcpuError> {
        use field::*;
        use ipc_proto::manifest::EntryMode;
        let mut v = Self {
            cap,
            proc_controls: 0,
            cr0_mask: 0,
            cr0_shadow: 0,
            cr4_mask: 0,
            cr4_shadow: 0,
            cr4_fixed: 0,
            rip,
            entry_info: 0,
            interrupt_window: false,
            last: ExitRecord::default(),
            mode: None,
            exit_cr0: None,
            efer: 0,
            interruptibility: 0,
            deadline: 0,
            pin_controls: 0,
            exit_controls: 0,
            timer_on: false,
            timer_shift: 5,
            timer_missing: false,
            timer_rate_known: false,
            cr2_said: false,
            armed: (0, 0),
            sequence: 0,
            stats: Stats::default(),
            reads_last: 0,
            reads_total: 0,
            writes_total: 0,
            failure: None,
            mmu: 0,
            ram: 0,
            ept_forwarded: 0,
        };
        // The VMX-preemption timer's rate: IA32_VMX_MISC bits 4:0, which
        // seL4 lets a VCPU read (64-bit-guest kernels); else it is learnt.
        if c::X86_VCPU_READ_MSR != 0 {
            if let Ok(r) = invoke(cap, c::X86_VCPU_READ_MSR, &[], &[0x485]) {
                v.timer_shift = (r[0] & 0x1f) as u32;
                v.timer_rate_known = true;
            }
        }
        v.proc_controls = v.read(PROC_CONTROLS)? | PROC_HLT_EXITING;
        v.pin_controls = v.read(PIN_CONTROLS)?;
        let proc2 = v.read(PROC2_CONTROLS)?;
        v.write(PROC2_CONTROLS, proc2 | PROC2_UNRESTRICTED_GUEST)?;
        v.exit_controls = v.read(EXIT_CONTROLS)?;
        let entry = v.read(ENTRY_CONTROLS)?;
        v.write(
            ENTRY_CONTROLS,
            (entry & !ENTRY_IA32E_MODE) | ENTRY_LOAD_EFER,
        )?;
        // seL4 set CR0 and CR4 to their fixed bits (CR0 without PE and PG
        // where the CPU has unrestricted guest): those stay the host's, and
        // the guest reads its own values in the read shadows.
        let cr0_fixed = v.read(GUEST_CR0)?;
        let cr4_fixed = v.read(GUEST_CR4)?;
        let (cs_ar, ds_ar, limit, cr0_seen, code_sel, data_sel) = match mode {
            EntryMode::Flat32 => (AR_CODE32, AR_DATA32, 0xffff_ffff, 0x31, 0x08, 0x10),
            EntryMode::Real16 => (AR_CODE16, AR_DATA16, 0xffff, 0x30, 0, 0),
        };
        v.cr0_mask = cr0_fixed;
        v.cr0_shadow = cr0_seen;
        // As the native stub: the guest owns the CR4 bits every x86-64 CPU
        // has; a MOV to CR4 that changes any other exits to the vmm-server,
        // which raises #GP for what the VM's CPUID hides or applies the
        // value with SET_PAGING. The guest reads its own value in the
        // read shadow (0 at start: VMXE reads as 0).
        v.cr4_mask = (cr4_fixed | !ipc_proto::x86::cr4::NESTED_GUEST_OWNED) & 0xffff_ffff;
        v.cr4_shadow = 0;
        v.cr4_fixed = cr4_fixed;
        for (seg, ar, sel, lim) in [
            (ES, ds_ar, data_sel, limit),
            (CS, cs_ar, code_sel, limit),
            (SS, ds_ar, data_sel, limit),
            (DS, ds_ar, data_sel, limit),
            (FS, ds_ar, data_sel, limit),
            (GS, ds_ar, data_sel, limit),
            (LDTR, AR_UNUSABLE, 0, 0),
            (TR, AR_TSS_BUSY, 0, 0xffff),
        ] {
            v.write(GUEST_ES_SELECTOR + 2 * seg, sel)?;
            v.write(GUEST_ES_LIMIT + 2 * seg, lim)?;
            v.write(GUEST_ES_AR + 2 * seg, ar)?;
            v.write(GUEST_ES_BASE + 2 * seg, 0)?;
        }
        for (f, value) in [
            (GUEST_GDTR_BASE, 0),
            (GUEST_IDTR_BASE, 0),
            (GUEST_GDTR_LIMIT, 0xffff),
            (GUEST_IDTR_LIMIT, 0xffff),
            (CR0_MASK, v.cr0_mask),
            (CR4_MASK, v.cr4_mask),
            (CR0_READ_SHADOW, cr0_seen),
            (CR4_READ_SHADOW, 0),
            (GUEST_CR0, cr0_seen | cr0_fixed),
            (GUEST_CR3, 0),
            (GUEST_CR4, cr4_fixed),
            (GUEST_EFER, 0),
            (GUEST_DR7, 0x400),
            (GUEST_RSP, 0),
            (GUEST_RFLAGS, 2),
            (GUEST_INTERRUPTIBILITY, 0),
            (GUEST_ACTIVITY, 0),
        ] {
            v.write(f, value)?;
        }
        v.write_gprs(&ipc_proto::GuestRegs {
            rax: regs[0],
            rbx: regs[1],
            // A boot sector gets DL = 0x80, the first hard disk.
            rdx: if mode == EntryMode::Real16 { 0x80 } else { 0 },
            rsi: regs[2],
            ..Default::default()
        })?;
        v.last.regs.rflags = 2;
        Ok(v)
    }

    /// Forwards the EPT violations on the `ram` bytes of guest RAM to the
    /// mmu-server component's endpoint `mmu`.
    pub fn with_mmu(mut self, mmu: CPtr, ram: u64) -> Self {
        (self.mmu, self.ram) = (mmu, ram);
        self
    }

    /// An EPT violation on guest RAM goes to the mmu-server component
    /// (`seL4_Call`, as the native stub routes these exits to the
    /// mmu-server), which maps the 2 MiB frame that holds the address; the
    /// guest then retries the access, with the event whose delivery the
    /// exit interrupted injected again (the native mmu-server's `retry`).
    /// An address outside guest RAM goes on to the vmm-server: MMIO, or
    /// the failure it reports; nothing maps it. `None` for other exits.
    fn forward_ept(&mut self, rec: &ExitRecord) -> Option<Result<(), VcpuError>> {
        use sel4_mmu_server as m;
        if rec.exit_code != vmx_exit::EPT_VIOLATION || rec.exit_info2 >= self.ram {
            return None;
        }
        self.ept_forwarded += 1;
        let gpa = rec.exit_info2;
        let err = |what, code| VcpuError {
            what,
            field: gpa,
            code,
        };
        let reply = match invoke(
            self.mmu,
            m::EPT_VIOLATION_LABEL,
            &[],
            &[gpa, rec.exit_info1],
        ) {
            Ok(r) => r,
            Err(e) => return Some(Err(err("the call to the mmu-server", e.code))),
        };
        match reply[0] {
            m::REPLY_MAPPED => {}
            m::REPLY_REFUSED => {
                return Some(Err(err(
                    "the mmu-server's Page_MapEPT of the frame holding guest-physical",
                    reply[2],
                )))
            }
            code => {
                return Some(Err(err(
                    "the mmu-server's mapping of guest-physical (its answer as the error)",
                    code,
                )))
            }
        }
        self.stats.installs = reply[1];
        // The guest retries at the same RIP with the same registers, the
        // interrupt window and exit deadline as they were. (Bit 12 of the
        // qualification, NMI unblocking by IRET, matters only with virtual
        // NMIs, which this VCPU does not use.)
        // An INT n, INT3 or INTO is not injected again: RIP still points
        // at the instruction, so the guest executes it again, now with the
        // page mapped (`event_to_redeliver`; injecting a software event
        // would also need the VM-entry instruction length, which seL4's
        // WriteVMCS refuses).
        match rec.event_to_redeliver() {
            Some(event) => Some(self.inject(&event)),
            None => Some(Ok(())),
        }
    }

    /// `seL4_X86_VCPU_WriteRegisters`: every general register but RSP.
    fn write_gprs(&mut self, r: &ipc_proto::GuestRegs) -> Result<(), VcpuError> {
        self.writes_total += 1;
        let all = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15,
        ];
        let n = if c::VTX_64BIT_GUESTS != 0 { 15 } else { 7 };
        invoke(self.cap, c::X86_VCPU_WRITE_REGISTERS, &[], &all[..n])
            .map(|_| ())
            .map_err(|e| VcpuError {
                what: "VCPU WriteRegisters",
                field: 0,
                code: e.code,
            })
    }

    /// The exit record of the exit whose message registers are `mr`.
    fn record(&mut self, mr: &[u64; 25]) -> ExitRecord {
        use field::*;
        self.reads_last = 0;
        self.exit_cr0 = None;
        let reason = mr[c::VMENTER_FAULT_REASON_MR as usize];
        // seL4 gives the basic reason (bits 15:0); a failed VMLAUNCH or
        // VMRESUME comes as -1.
        let exit_code = if reason as u32 == u32::MAX {
            u64::MAX
        } else {
            reason & 0xffff
        };
        let normal = exit_code != u64::MAX;
        let g = |i: u64| mr[(c::VMENTER_FAULT_EAX + i) as usize];
        let wide = c::VTX_64BIT_GUESTS != 0;
        let mut regs = ipc_proto::GuestRegs {
            rax: g(0),
            rbx: g(1),
            rcx: g(2),
            rdx: g(3),
            rsi: g(4),
            rdi: g(5),
            rbp: g(6),
            rip: mr[c::VMENTER_CALL_EIP_MR as usize],
            rflags: mr[c::VMENTER_FAULT_RFLAGS_MR as usize],
            ..Default::default()
        };
        if wide {
            [
                regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
            ] = [g(7), g(8), g(9), g(10), g(11), g(12), g(13), g(14)];
        }
        let basic = exit_code as u16;
        let instruction = normal && basic < 64 && INSTRUCTION_EXITS & (1 << basic) != 0;
        // Only what the exit's handling needs (`exit_reads`, in the lib
        // and unit-tested there): the others take the processor mode (RSP,
        // CR0, CR4, EFER, CS, CPL) from the last exit that read it, and
        // an instruction's exit never interrupts an event's delivery.
        let reads = if normal {
            sel4_vmm_server::exit_reads(
                exit_code,
                mr[c::VMENTER_FAULT_QUALIFICATION_MR as usize],
                mr[c::VMENTER_FAULT_GUEST_PHYSICAL_MR as usize],
                regs.rcx,
                self.ram,
                instruction,
            )
        } else {
            sel4_vmm_server::ExitReads {
                mode: true,
                idt: true,
            }
        };
        let mode = match self.mode {
            Some(m) if !reads.mode => m,
            _ => {
                let cr0 = self.cr0();
                let cr4 = self.field(GUEST_CR4);
                let cs_ar = self.field(GUEST_ES_AR + 2 * CS) as u32;
                let ss_ar = self.field(GUEST_ES_AR + 2 * SS) as u32;
                let m = Mode {
                    rsp: self.field(GUEST_RSP),
                    cr0,
                    cr4: (cr4 & !self.cr4_mask) | (self.cr4_shadow & self.cr4_mask),
                    efer: self.efer_now(),
                    cs: Segment {
                        // Not read (a `ReadVMCS` saved on every exit
                        // that reads the mode): no part of the vmm-server
                        // looks at CS's selector (its emulator fetches and
                        // decodes with CS's base, limit and attributes).
                        selector: 0,
                        attrib: ar_to_attrib(cs_ar),
                        limit: self.field(GUEST_ES_LIMIT + 2 * CS) as u32,
                        base: self.field(GUEST_ES_BASE + 2 * CS),
                    },
                    cpl: ((ss_ar >> 5) & 3) as u8,
                };
                self.mode = Some(m);
                m
            }
        };
        regs.rsp = mode.rsp;
        let next_rip = if instruction {
            regs.rip
                .wrapping_add(mr[c::VMENTER_FAULT_INSTRUCTION_LEN_MR as usize])
        } else {
            0
        };
        let exit_info2 = match (normal, exit_code) {
            (true, vmx_exit::EPT_VIOLATION | vmx_exit::EPT_MISCONFIG) => {
                mr[c::VMENTER_FAULT_GUEST_PHYSICAL_MR as usize]
            }
            (true, vmx_exit::EXCEPTION_OR_NMI) => {
                self.field(EXIT_INTERRUPTION_INFO) | self.field(EXIT_INTERRUPTION_ERROR_CODE) << 32
            }
            // The guest-linear address only string I/O uses.
            (true, vmx_exit::IO) if reads.mode => self.field(GUEST_LINEAR_ADDRESS),
            _ => 0,
        };
        let idt = if reads.idt {
            self.field(IDT_VECTORING_INFO) as u32
        } else {
            0
        };
        let idt_error = if idt & (1 << 31 | 1 << 11) == (1 << 31 | 1 << 11) {
            self.field(IDT_VECTORING_ERROR_CODE) as u32
        } else {
            0
        };
        let interruptibility = mr[c::VMENTER_FAULT_GUEST_INT_MR as usize];
        self.interruptibility = interruptibility;
        self.sequence += 1;
        ExitRecord {
            abi_version: ipc_proto::ABI_VERSION,
            arch: VcpuArch::Vmx as u32,
            sequence: self.sequence,
            exit_code,
            exit_info1: if normal {
                mr[c::VMENTER_FAULT_QUALIFICATION_MR as usize]
            } else {
                0
            },
            exit_info2,
            exit_int_info: exit_int_info(idt, idt_error),
            next_rip,
            regs,
            cr0: mode.cr0,
            // seL4 does not give the guest's CR2 (TODO: it is not switched).
            cr2: 0,
            cr3: mr[c::VMENTER_FAULT_CR3_MR as usize],
            cr4: mode.cr4,
            efer: mode.efer,
            cs: mode.cs,
            cpl: mode.cpl,
            interrupt_shadow: u8::from(interruptibility & 3 != 0),
            insn_len: 0,
            reserved: [0; 5],
            insn_bytes: [0; 16],
        }
    }

    /// The event for the next entry, in the VM-entry interruption
    /// information (MR2 of `VMEnter`) and its error code.
    fn inject(&mut self, e: &ipc_proto::EventInjection) -> Result<(), VcpuError> {
        // CR0.PE only for an exception that may push an error code (the
        // exits that did not read the mode read it now).
        let deliver =
            e.kind == 3 && matches!(e.vector, 8 | 10..=14 | 17) && self.cr0() & CR0_PE != 0;
        // TODO: a software interrupt (kind 4) needs the VM-entry
        // instruction length, which seL4's WriteVMCS does not accept.
        self.entry_info =
            u64::from(e.vector) | u64::from(e.kind & 7) << 8 | u64::from(deliver) << 11 | 1 << 31;
        if deliver {
            self.write(
                field::ENTRY_EXCEPTION_ERROR_CODE,
                u64::from(e.error_code & 0xffff),
            )?;
        }
        Ok(())
    }

    /// Applies a resume: registers with WriteRegisters and WriteVMCS (only
    /// what changed), RIP and the event through the next VMEnter's message
    /// registers.
    fn apply(&mut self, r: &Resume) -> Result<(), VcpuError> {
        use field::*;
        let Some(flags) = ResumeFlags::from_bits(r.flags) else {
            self.stats.resumes_refused += 1;
            return Ok(());
        };
        // seL4 keeps XSAVE hidden (`Sel4Host` does not offer it: XCR0 is
        // the kernel's), so no server has a reason to load XCR0.
        if flags.contains(ResumeFlags::SET_XCR0) {
            self.stats.resumes_refused += 1;
            return Err(VcpuError {
                what: "a resume's SET_XCR0 (seL4 keeps XSAVE hidden)",
                field: r.xcr0,
                code: 0,
            });
        }
        // The seL4 platform keeps the guest's TSC the host's (its
        // vmm-server does not offset it).
        if flags.contains(ResumeFlags::SET_TSC_OFFSET) {
            self.stats.resumes_refused += 1;
            return Err(VcpuError {
                what: "a resume's SET_TSC_OFFSET (seL4 keeps the guest's TSC the host's)",
                field: r.tsc_offset,
                code: 0,
            });
        }
        let last = self.last.regs;
        if flags.contains(ResumeFlags::SET_GPRS) {
            let mut a = r.regs;
            let mut b = last;
            (a.rsp, a.rip, a.rflags) = (0, 0, 0);
            (b.rsp, b.rip, b.rflags) = (0, 0, 0);
            if a != b {
                self.write_gprs(&r.regs)?;
            }
            if r.regs.rsp != last.rsp {
                self.write(GUEST_RSP, r.regs.rsp)?;
                if let Some(m) = &mut self.mode {
                    m.rsp = r.regs.rsp;
                }
            }
        }
        if flags.contains(ResumeFlags::SET_RIP) {
            self.rip = r.regs.rip;
            // The instruction that blocked interrupts (STI, MOV SS) is behind.
            if self.interruptibility & 3 != 0 {
                self.write(GUEST_INTERRUPTIBILITY, self.interruptibility & !3)?;
            }
        }
        if flags.contains(ResumeFlags::SET_RFLAGS) && r.regs.rflags != last.rflags {
            self.write(GUEST_RFLAGS, r.regs.rflags)?;
        }
        self.interrupt_window = flags.contains(ResumeFlags::REQUEST_INTERRUPT_WINDOW);
        if flags.contains(ResumeFlags::INJECT_EVENT) {
            self.inject(&r.event)?;
        }
        if flags.contains(ResumeFlags::SET_EXIT_DEADLINE) {
            self.deadline = r.exit_deadline;
        }
        if flags.contains(ResumeFlags::SET_PAGING) {
            // Under nested paging SET_PAGING carries the guest's CR4 alone
            // (the native stub's `validate_nested_cr4`): an allowlist, and
            // PAE stays set in long mode.
            use ipc_proto::x86::cr4;
            let allowed = cr4::NESTED_GUEST_OWNED
                | cr4::MCE
                | cr4::FSGSBASE
                | cr4::PCIDE
                | cr4::OSXSAVE
                | cr4::SMEP
                | cr4::SMAP
                | cr4::UMIP;
            let v = r.paging.cr4;
            let lma = self.last.efer & (1 << 10) != 0;
            if v & !allowed != 0 || (lma && v & cr4::PAE == 0) {
                self.stats.resumes_refused += 1;
                return Err(VcpuError {
                    what: "a resume's CR4 (SET_PAGING) outside the allowlist",
                    field: v,
                    code: 0,
                });
            }
            self.write(GUEST_CR4, v | self.cr4_fixed)?;
            self.write(CR4_READ_SHADOW, v)?;
            self.cr4_shadow = v;
            self.mode = None;
        }
        if flags.contains(ResumeFlags::SET_CR2) && !self.cr2_said {
            // seL4 16.0.0 neither saves nor loads a guest's CR2.
            self.cr2_said = true;
            crate::console::say!(
                "seL4 cannot set the guest's CR2: the page fault injected at rip={:#x} carries a stale CR2 (said once)",
                last.rip
            );
        }
        // SET_PAGING, SET_NESTED_ROOT and SET_CR2 are the mmu-server's
        // (shadow paging, which seL4 has not; the EPT is built at boot).
        Ok(())
    }

    /// RDMSR/WRMSR of an MSR whose value is the hardware's (the native stub
    /// passes EFER through its MSR bitmap and keeps the others in the VMCB
    /// or VMCS; seL4's MSR bitmap passes only the SYSENTER MSRs, FS_BASE,
    /// GS_BASE and KERNEL_GS_BASE): EFER writes through the VMCS, STAR,
    /// LSTAR, CSTAR and SFMASK through the VCPU's ReadMSR/WriteMSR. Returns
    /// `None` for every other exit, which goes to the vmm-server.
    fn vmcs_msr(&mut self, rec: &ExitRecord) -> Option<Result<(), VcpuError>> {
        use field::*;
        const EFER: u32 = 0xc000_0080;
        const LMA: u64 = 1 << 10;
        let write = match rec.exit_code {
            vmx_exit::RDMSR => false,
            vmx_exit::WRMSR => true,
            _ => return None,
        };
        let index = rec.regs.rcx as u32;
        if matches!(index, 0xc000_0081..=0xc000_0084) && c::X86_VCPU_READ_MSR != 0 {
            return Some(self.syscall_msr(rec, index, write));
        }
        let f = match index {
            EFER if write => GUEST_EFER,
            0x174 => GUEST_SYSENTER_CS,
            0x175 => GUEST_SYSENTER_ESP,
            0x176 => GUEST_SYSENTER_EIP,
            0xc000_0100 => GUEST_ES_BASE + 2 * FS,
            0xc000_0101 => GUEST_ES_BASE + 2 * GS,
            _ => return None,
        };
        let value = (rec.regs.rdx << 32) | (rec.regs.rax & 0xffff_ffff);
        let r = (|| {
            if write {
                let v = if f == GUEST_EFER {
                    // Only SCE, LME and NXE are the guest's; LMA is the CPU's.
                    if value & !(1 | 1 << 8 | 1 << 11 | LMA) != 0 {
                        return self.inject_gp();
                    }
                    (value & !LMA) | (self.efer_now() & LMA)
                } else {
                    value
                };
                self.write(f, v)?;
                if f == GUEST_EFER {
                    self.efer = v;
                }
                self.mode = None;
            } else {
                let v = self.read(f)?;
                let regs = ipc_proto::GuestRegs {
                    rax: v & 0xffff_ffff,
                    rdx: v >> 32,
                    ..rec.regs
                };
                self.write_gprs(&regs)?;
                self.last.regs = regs;
            }
            self.rip = rec.next_rip;
            Ok(())
        })();
        Some(r)
    }

    /// Before an entry: the VMX-preemption timer towards the exit deadline
    /// (one WriteVMCS per entry while a deadline is set).
    fn arm_timer(&mut self) -> Result<(), VcpuError> {
        use field::*;
        let on = self.deadline != 0;
        if on != self.timer_on {
            let pin = if on {
                self.pin_controls | PIN_PREEMPTION_TIMER
            } else {
                self.pin_controls
            };
            // The exit control may be set only with the pin control.
            let (first, second) = if on {
                (
                    (PIN_CONTROLS, pin),
                    (
                        EXIT_CONTROLS,
                        self.exit_controls | EXIT_SAVE_PREEMPTION_TIMER,
                    ),
                )
            } else {
                ((EXIT_CONTROLS, self.exit_controls), (PIN_CONTROLS, pin))
            };
            self.write(first.0, first.1)?;
            self.write(second.0, second.1)?;
            self.timer_on = on;
            if on && self.read(PIN_CONTROLS)? & PIN_PREEMPTION_TIMER == 0 && !self.timer_missing {
                self.timer_missing = true;
                crate::console::say!(
                    "this CPU has no VMX-preemption timer: exit deadlines are not kept"
                );
            }
        }
        if on {
            let now = rdtsc();
            let count =
                (self.deadline.saturating_sub(now) >> self.timer_shift).clamp(1, 0xffff_ffff);
            self.write(GUEST_PREEMPTION_TIMER, count)?;
            self.armed = (rdtsc(), count);
        }
        Ok(())
    }

    /// STAR, LSTAR, CSTAR, SFMASK: seL4 keeps them in the VCPU and loads
    /// them around each entry.
    fn syscall_msr(&mut self, rec: &ExitRecord, index: u32, write: bool) -> Result<(), VcpuError> {
        let err = |what, code| VcpuError {
            what,
            field: u64::from(index),
            code,
        };
        if write {
            let value = (rec.regs.rdx << 32) | (rec.regs.rax & 0xffff_ffff);
            self.writes_total += 1;
            invoke(
                self.cap,
                c::X86_VCPU_WRITE_MSR,
                &[],
                &[u64::from(index), value],
            )
            .map_err(|e| err("VCPU WriteMSR", e.code))?;
        } else {
            self.reads_total += 1;
            let v = invoke(self.cap, c::X86_VCPU_READ_MSR, &[], &[u64::from(index)])
                .map_err(|e| err("VCPU ReadMSR", e.code))?[0];
            let regs = ipc_proto::GuestRegs {
                rax: v & 0xffff_ffff,
                rdx: v >> 32,
                ..rec.regs
            };
            self.write_gprs(&regs)?;
            self.last.regs = regs;
        }
        self.rip = rec.next_rip;
        Ok(())
    }

    /// #GP(0) on the next entry.
    fn inject_gp(&mut self) -> Result<(), VcpuError> {
        self.entry_info = 13 | 3 << 8 | 1 << 11 | 1 << 31;
        self.write(field::ENTRY_EXCEPTION_ERROR_CODE, 0)?;
        self.rip = self.last.regs.rip;
        Ok(())
    }

    /// Exits so far.
    pub fn stats_total(&self) -> u64 {
        self.stats.exits_total
    }

    fn count(&mut self, rec: &ExitRecord) {
        let s = &mut self.stats;
        s.exits_total += 1;
        // The native stub's classes (`kernel-stub/src/arch/mod.rs`).
        let counter = match ExitKind::of(rec) {
            ExitKind::Io => &mut s.exits_ioio,
            ExitKind::Hlt => &mut s.exits_hlt,
            ExitKind::Cpuid => &mut s.exits_cpuid,
            ExitKind::Msr { .. } => &mut s.exits_msr,
            ExitKind::NestedPageFault | ExitKind::NestedMisconfig => &mut s.exits_npf,
            ExitKind::Exception { .. } => &mut s.exits_exception,
            ExitKind::Shutdown => &mut s.exits_shutdown,
            ExitKind::ExternalInterrupt => &mut s.exits_host_interrupt,
            ExitKind::EntryFailed => &mut s.exits_invalid,
            _ => &mut s.exits_other,
        };
        *counter += 1;
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; seL4 leaves CR4.TSD clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Access rights as SVM attributes (the record's `Segment::attrib`).
fn ar_to_attrib(ar: u32) -> u16 {
    if u64::from(ar) & AR_UNUSABLE != 0 {
        return 0;
    }
    ((ar & 0xff) | ((ar >> 4) & 0xf00)) as u16
}

/// IDT-vectoring information in the SVM EXITINTINFO form of the record
/// (the native stub's `rules::exit_int_info`).
fn exit_int_info(idt_vectoring: u32, error_code: u32) -> u64 {
    if idt_vectoring & (1 << 31) == 0 {
        return 0;
    }
    let kind = match (idt_vectoring >> 8) & 7 {
        5 | 6 => 3,
        k => k,
    };
    let ev = idt_vectoring & (1 << 11);
    let ec = if ev != 0 {
        u64::from(error_code) << 32
    } else {
        0
    };
    u64::from(idt_vectoring & 0xff) | u64::from(kind << 8) | u64::from(ev) | (1 << 31) | ec
}

impl Stub for Vcpu {
    fn vcpu_run(&mut self, resume: Option<&Resume>) -> Result<ExitRecord, ErrorCode> {
        if let Some(r) = resume {
            if let Err(e) = self.apply(r) {
                self.failure.get_or_insert(e);
                return Err(ErrorCode::NotPermitted);
            }
        }
        loop {
            let controls = self.proc_controls
                | if self.interrupt_window {
                    PROC_INTERRUPT_WINDOW
                } else {
                    0
                };
            let entry_info = core::mem::take(&mut self.entry_info);
            if let Err(e) = self.arm_timer() {
                self.failure.get_or_insert(e);
                return Err(ErrorCode::NotPermitted);
            }
            let mut mr = loop {
                match sel4_sys::vm_enter(self.rip, controls, entry_info) {
                    VmEnter::Exit(mr) => break mr,
                    // No notification is bound yet.
                    VmEnter::Notification(_) => continue,
                }
            };
            let reason = c::VMENTER_FAULT_REASON_MR as usize;
            if mr[reason] & 0xffff == REASON_PREEMPTION_TIMER {
                // The exit deadline passed: to the vmm-server this is the
                // host interrupt the native stub's deadline timer makes.
                if !self.timer_rate_known {
                    let (at, count) = self.armed;
                    let per_count = (rdtsc().wrapping_sub(at) / count.max(1)).max(1);
                    self.timer_shift = per_count.ilog2().min(31);
                }
                mr[reason] = 1;
            }
            let rec = self.record(&mr);
            self.rip = rec.regs.rip;
            self.last = rec;
            self.count(&rec);
            if self.failure.is_some() {
                return Err(ErrorCode::NotPermitted);
            }
            // The mmu-server's exits go to it, the stub's share of MSR
            // exits is done here, as the native stub's hardware does it,
            // and the guest goes on.
            match self.forward_ept(&rec).or_else(|| self.vmcs_msr(&rec)) {
                None => return Ok(rec),
                Some(Ok(())) => continue,
                Some(Err(e)) => {
                    self.failure.get_or_insert(e);
                    return Err(ErrorCode::NotPermitted);
                }
            }
        }
    }

    fn stats_read(&mut self) -> Result<Stats, ErrorCode> {
        Ok(self.stats)
    }
}
