//! Emulator tests: instructions hand-assembled into a test RAM, run against
//! a device that remembers every MMIO and port access.

use super::memory::tests::TestRam;
use super::*;
use crate::vcpu::{CR0_PE, CR0_PG, EFER_LMA, EFER_LME};
use ipc_proto::{ExitRecord, Segment};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec::Vec;

/// Where the device registers start in these tests (above the 1 MiB RAM).
pub(crate) const MMIO: u64 = 0xfeb0_0000;
/// Where test code goes.
const CODE: u64 = 0x1000;

/// A device: byte registers at any MMIO address, ports that answer with
/// their number, and a log of every access.
#[derive(Default)]
pub(crate) struct Bus {
    pub(crate) regs: BTreeMap<u64, u8>,
    pub(crate) log: Vec<(char, u64, u8, u64)>,
    pub(crate) stop_on_port: Option<u16>,
}

impl IoBus for Bus {
    fn port_read(&mut self, port: u16, size: IoSize) -> u32 {
        self.log.push(('i', u64::from(port), size.bytes(), 0));
        0x1122_3344 & size.mask()
    }
    fn port_write(&mut self, port: u16, size: IoSize, value: u32) -> WriteOutcome {
        self.log
            .push(('o', u64::from(port), size.bytes(), u64::from(value)));
        if self.stop_on_port == Some(port) {
            WriteOutcome::Stop {
                status: value as u8,
            }
        } else {
            WriteOutcome::Continue
        }
    }
    fn mmio_read(&mut self, gpa: u64, size: u8) -> u64 {
        let mut v = 0u64;
        for i in 0..u64::from(size) {
            v |= u64::from(*self.regs.get(&(gpa + i)).unwrap_or(&0)) << (8 * i);
        }
        self.log.push(('r', gpa, size, v));
        v
    }
    fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> WriteOutcome {
        for i in 0..u64::from(size) {
            self.regs.insert(gpa + i, (value >> (8 * i)) as u8);
        }
        self.log.push(('w', gpa, size, value));
        WriteOutcome::Continue
    }
}

impl Bus {
    pub(crate) fn set(&mut self, gpa: u64, size: u8, v: u64) {
        for i in 0..u64::from(size) {
            self.regs.insert(gpa + i, (v >> (8 * i)) as u8);
        }
    }
    pub(crate) fn get(&self, gpa: u64, size: u8) -> u64 {
        (0..u64::from(size)).fold(0, |v, i| {
            v | u64::from(*self.regs.get(&(gpa + i)).unwrap_or(&0)) << (8 * i)
        })
    }
}

/// A flat 32-bit protected-mode CPU (the multiboot entry state).
pub(crate) fn flat32() -> VcpuState {
    let mut rec = ExitRecord {
        cr0: CR0_PE | 0x10,
        ..Default::default()
    };
    rec.cs = Segment {
        selector: 8,
        attrib: 0xc9b,
        limit: u32::MAX,
        base: 0,
    };
    rec.regs.rip = CODE;
    rec.regs.rflags = 2;
    VcpuState::from_record(&rec)
}

/// Real mode, CS = DS = ES = SS = 0.
fn real16() -> VcpuState {
    let mut rec = ExitRecord {
        cr0: 0x10,
        ..Default::default()
    };
    rec.cs = Segment {
        selector: 0,
        attrib: 0x9b,
        limit: 0xffff,
        base: 0,
    };
    rec.regs.rip = CODE;
    rec.regs.rflags = 2;
    VcpuState::from_record(&rec)
}

/// 64-bit mode with identity-mapped 2 MiB pages for the first GiB and
/// the 4 GiB just below the MMIO address, tables at 0x10000.
fn long64(ram: &mut TestRam) -> VcpuState {
    let mut rec = ExitRecord {
        cr0: CR0_PE | CR0_PG | 0x10,
        cr3: 0x10000,
        cr4: crate::vcpu::CR4_PAE,
        efer: EFER_LMA | EFER_LME,
        ..Default::default()
    };
    rec.cs = Segment {
        selector: 8,
        attrib: 0xa9b,
        limit: u32::MAX,
        base: 0,
    };
    ram.put64(0x10000, 0x11000 | 3);
    for g in 0..4u64 {
        ram.put64(0x11000 + g * 8, (0x12000 + g * 0x1000) | 3);
        for i in 0..512u64 {
            let pa = (g << 30) | (i << 21);
            ram.put64(0x12000 + g * 0x1000 + i * 8, pa | 0x83);
        }
    }
    rec.regs.rip = CODE;
    rec.regs.rflags = 2;
    VcpuState::from_record(&rec)
}

pub(crate) struct Rig {
    pub(crate) ram: TestRam,
    pub(crate) cpu: VcpuState,
    pub(crate) bus: Bus,
    pub(crate) max: u64,
}

impl Rig {
    pub(crate) fn new(cpu: VcpuState) -> Self {
        Self {
            ram: TestRam::new(1 << 20),
            cpu,
            bus: Bus::default(),
            max: MAX_ITERATIONS,
        }
    }

    fn long() -> Self {
        let mut ram = TestRam::new(1 << 20);
        let cpu = long64(&mut ram);
        Self {
            ram,
            cpu,
            bus: Bus::default(),
            max: MAX_ITERATIONS,
        }
    }

    pub(crate) fn code(&mut self, bytes: &[u8]) {
        let at = (self.cpu.seg(SegReg::Cs).base + self.cpu.regs.rip) as usize;
        self.ram.bytes[at..at + bytes.len()].copy_from_slice(bytes);
    }

    pub(crate) fn run(&mut self, expect: Expect) -> Result<Done, EmuError> {
        let mut mem = self.ram.ram();
        let mut walker = PageWalker;
        let mut e = Emulator::new(&mut self.cpu, &mut mem, &mut walker, &mut self.bus);
        e.max_iterations = self.max;
        e.step(None, expect)
    }

    fn go(&mut self, bytes: &[u8]) -> Done {
        self.code(bytes);
        self.run(Expect::Memory).expect("emulates")
    }

    fn fault(&mut self, bytes: &[u8]) -> Fault {
        self.code(bytes);
        match self.run(Expect::Memory) {
            Err(EmuError::Fault(f)) => f,
            other => panic!("expected a fault, got {other:?}"),
        }
    }
}

#[test]
fn mov_stores_and_loads_every_width() {
    let mut r = Rig::new(flat32());
    r.cpu.regs.rax = 0x1122_3344_5566_7788;
    r.cpu.regs.rbx = MMIO;
    // mov [ebx], eax
    let d = r.go(&[0x89, 0x03]);
    assert_eq!((d.completed, d.mnemonic), (true, Mnemonic::Mov));
    assert_eq!(r.bus.get(MMIO, 4), 0x5566_7788);
    assert_eq!(r.cpu.regs.rip, CODE + 2);
    // mov word [ebx+4], ax (66 prefix)
    r.go(&[0x66, 0x89, 0x43, 0x04]);
    assert_eq!(r.bus.get(MMIO + 4, 2), 0x7788);
    // mov byte [ebx+8], ah
    r.go(&[0x88, 0x63, 0x08]);
    assert_eq!(r.bus.get(MMIO + 8, 1), 0x77);
    // mov dword [ebx+0xc], 0xdeadbeef
    r.go(&[0xc7, 0x43, 0x0c, 0xef, 0xbe, 0xad, 0xde]);
    assert_eq!(r.bus.get(MMIO + 0xc, 4), 0xdead_beef);
    // mov ecx, [ebx+0xc]: zero-extends into RCX
    r.cpu.regs.rcx = u64::MAX;
    r.go(&[0x8b, 0x4b, 0x0c]);
    assert_eq!(r.cpu.regs.rcx, 0xdead_beef);
    // mov cl, [ebx+0xc]: merges
    r.cpu.regs.rcx = 0xffff_ff00;
    r.go(&[0x8a, 0x4b, 0x0c]);
    assert_eq!(r.cpu.regs.rcx, 0xffff_ffef);
    // mov ch, [ebx+0xd]
    r.go(&[0x8a, 0x6b, 0x0d]);
    assert_eq!(r.cpu.regs.rcx, 0xffff_beef);
    // mov eax, [moffs32]
    let addr = (MMIO as u32 + 0xc).to_le_bytes();
    r.go(&[0xa1, addr[0], addr[1], addr[2], addr[3]]);
    assert_eq!(r.cpu.regs.rax, 0xdead_beef);
    assert_eq!(r.cpu.regs.rflags, 2, "MOV leaves the flags");
}

#[test]
fn movzx_movsx_extend() {
    let mut r = Rig::new(flat32());
    r.bus.set(MMIO, 2, 0x80f0);
    r.cpu.regs.rsi = MMIO;
    r.go(&[0x0f, 0xb6, 0x06]); // movzx eax, byte [esi]
    assert_eq!(r.cpu.regs.rax, 0xf0);
    r.go(&[0x0f, 0xbe, 0x06]); // movsx eax, byte [esi]
    assert_eq!(r.cpu.regs.rax, 0xffff_fff0);
    r.go(&[0x0f, 0xbf, 0x06]); // movsx eax, word [esi]
    assert_eq!(r.cpu.regs.rax, 0xffff_80f0);
    r.cpu.regs.rdx = 0xaaaa_aaaa;
    r.go(&[0x66, 0x0f, 0xb6, 0x16]); // movzx dx, byte [esi]
    assert_eq!(r.cpu.regs.rdx, 0xaaaa_00f0);
}

#[test]
fn alu_forms_on_mmio_set_flags_like_the_alu() {
    let mut r = Rig::new(flat32());
    r.cpu.regs.rdi = MMIO;
    r.bus.set(MMIO, 4, 0xffff_ffff);
    // add dword [edi], 1
    r.go(&[0x83, 0x07, 0x01]);
    assert_eq!(r.bus.get(MMIO, 4), 0);
    assert_eq!(
        r.cpu.regs.rflags & alu::STATUS,
        alu::CF | alu::ZF | alu::PF | alu::AF
    );
    // or byte [edi], 0x80
    r.go(&[0x80, 0x0f, 0x80]);
    assert_eq!(r.bus.get(MMIO, 1), 0x80);
    assert_eq!(r.cpu.regs.rflags & alu::STATUS, alu::SF);
    // and dword [edi], ~0x80 via register: mov ecx, -129; and [edi], ecx
    r.cpu.regs.rcx = 0xffff_ff7f;
    r.go(&[0x21, 0x0f]);
    assert_eq!(r.bus.get(MMIO, 4), 0);
    // cmp dword [edi], 5 writes nothing
    let writes = r.bus.log.iter().filter(|l| l.0 == 'w').count();
    r.go(&[0x83, 0x3f, 0x05]);
    assert_eq!(r.bus.log.iter().filter(|l| l.0 == 'w').count(), writes);
    assert_eq!(r.cpu.regs.rflags & alu::CF, alu::CF);
    // test byte [edi], 1
    r.go(&[0xf6, 0x07, 0x01]);
    assert_eq!(r.cpu.regs.rflags & alu::ZF, alu::ZF);
    // sub eax, [edi] (memory source)
    r.cpu.regs.rax = 3;
    r.bus.set(MMIO, 4, 5);
    r.go(&[0x2b, 0x07]);
    assert_eq!(r.cpu.regs.rax, 0xffff_fffe);
    assert_eq!(r.cpu.regs.rflags & alu::CF, alu::CF);
    // adc dword [edi], 0 with CF set
    r.go(&[0x83, 0x17, 0x00]);
    assert_eq!(r.bus.get(MMIO, 4), 6);
    // inc, dec, neg, not
    r.go(&[0xff, 0x07]);
    assert_eq!(r.bus.get(MMIO, 4), 7);
    r.go(&[0xfe, 0x0f]);
    assert_eq!(r.bus.get(MMIO, 1), 6);
    r.go(&[0xf7, 0x1f]);
    assert_eq!(r.bus.get(MMIO, 4), 0xffff_fffa);
    r.go(&[0xf7, 0x17]);
    assert_eq!(r.bus.get(MMIO, 4), 5);
    // xor [edi], edi
    r.go(&[0x31, 0x3f]);
    assert_eq!(r.bus.get(MMIO, 4), 5 ^ u64::from(MMIO as u32));
}

#[test]
fn xchg_and_cmpxchg() {
    let mut r = Rig::new(flat32());
    r.cpu.regs.rbx = MMIO;
    r.bus.set(MMIO, 4, 7);
    r.cpu.regs.rcx = 9;
    r.go(&[0x87, 0x0b]); // xchg [ebx], ecx
    assert_eq!((r.bus.get(MMIO, 4), r.cpu.regs.rcx), (9, 7));
    // lock cmpxchg [ebx], ecx: EAX = 9 matches
    r.cpu.regs.rax = 9;
    r.go(&[0xf0, 0x0f, 0xb1, 0x0b]);
    assert_eq!(r.bus.get(MMIO, 4), 7);
    assert_ne!(r.cpu.regs.rflags & alu::ZF, 0);
    // mismatch: EAX gets the memory value, memory is not written
    r.cpu.regs.rax = 1;
    let writes = r.bus.log.iter().filter(|l| l.0 == 'w').count();
    r.go(&[0x0f, 0xb1, 0x0b]);
    assert_eq!(r.cpu.regs.rax, 7);
    assert_eq!(r.cpu.regs.rflags & alu::ZF, 0);
    assert_eq!(r.bus.log.iter().filter(|l| l.0 == 'w').count(), writes);
}

#[test]
fn cmpxchg8b_and_16b() {
    let mut r = Rig::new(flat32());
    r.cpu.regs.rsi = MMIO;
    r.bus.set(MMIO, 8, 0x0000_0002_0000_0001);
    r.cpu.regs.rax = 1;
    r.cpu.regs.rdx = 2;
    r.cpu.regs.rbx = 0xaaaa;
    r.cpu.regs.rcx = 0xbbbb;
    r.go(&[0xf0, 0x0f, 0xc7, 0x0e]); // lock cmpxchg8b [esi]
    assert_eq!(r.bus.get(MMIO, 8), 0x0000_bbbb_0000_aaaa);
    assert_ne!(r.cpu.regs.rflags & alu::ZF, 0);
    r.go(&[0x0f, 0xc7, 0x0e]);
    assert_eq!((r.cpu.regs.rax, r.cpu.regs.rdx), (0xaaaa, 0xbbbb));
    assert_eq!(r.cpu.regs.rflags & alu::ZF, 0);

    let mut r = Rig::long();
    r.cpu.regs.rdi = MMIO + 8;
    r.code(&[0x48, 0x0f, 0xc7, 0x0f]); // cmpxchg16b [rdi]
    assert_eq!(
        r.run(Expect::Memory),
        Err(EmuError::Fault(Fault::gp(0))),
        "misaligned"
    );
    r.cpu.regs.rdi = MMIO + 16;
    r.cpu.regs.rbx = 5;
    r.cpu.regs.rcx = 6;
    r.go(&[0x48, 0x0f, 0xc7, 0x0f]);
    assert_eq!((r.bus.get(MMIO + 16, 8), r.bus.get(MMIO + 24, 8)), (5, 6));
}

#[test]
fn bit_tests_with_register_offsets_reach_other_units() {
    let mut r = Rig::new(flat32());
    r.cpu.regs.rbx = MMIO + 8;
    r.cpu.regs.rcx = 33; // bit 1 of the next dword
    r.go(&[0x0f, 0xab, 0x0b]); // bts [ebx], ecx
    assert_eq!(r.bus.get(MMIO + 12, 4), 2);
    r.cpu.regs.rcx = u64::from((-31i32).cast_unsigned()); // bit 1 of the dword before
    r.go(&[0x0f, 0xab, 0x0b]);
    assert_eq!(r.bus.get(MMIO + 4, 4), 2);
    assert_eq!(r.cpu.regs.rflags & alu::CF, 0);
    r.go(&[0x0f, 0xa3, 0x0b]); // bt [ebx], ecx
    assert_eq!(r.cpu.regs.rflags & alu::CF, alu::CF);
    r.go(&[0x0f, 0xba, 0x33, 0x21]); // btr dword [ebx], 33 -> bit 1
    r.bus.set(MMIO + 8, 4, 2);
    r.go(&[0x0f, 0xba, 0x3b, 0x21]); // btc dword [ebx], 33 -> bit 1
    assert_eq!(r.bus.get(MMIO + 8, 4), 0);
    assert_eq!(r.cpu.regs.rflags & alu::CF, alu::CF);
}

#[test]
fn rep_stos_forwards_and_backwards() {
    let mut r = Rig::new(flat32());
    r.cpu.regs.rdi = MMIO;
    r.cpu.regs.rcx = 4;
    r.cpu.regs.rax = 0xa5a5_a5a5;
    r.go(&[0xf3, 0xab]); // rep stosd
    assert_eq!(r.bus.get(MMIO, 8), 0xa5a5_a5a5_a5a5_a5a5);
    assert_eq!(r.bus.get(MMIO + 12, 4), 0xa5a5_a5a5);
    assert_eq!((r.cpu.regs.rdi, r.cpu.regs.rcx), (MMIO + 16, 0));
    r.cpu.regs.rflags |= alu::DF;
    r.cpu.regs.rcx = 2;
    r.cpu.regs.rax = 0x11;
    r.go(&[0xf3, 0xaa]); // rep stosb, backwards
    assert_eq!(r.bus.get(MMIO + 15, 2), 0x1111);
    assert_eq!(r.cpu.regs.rdi, MMIO + 14);
    // rep with a zero count does nothing but move RIP.
    let n = r.bus.log.len();
    r.go(&[0xf3, 0xaa]);
    assert_eq!(r.bus.log.len(), n);
}

#[test]
fn a_long_rep_stops_and_resumes_at_the_same_rip() {
    let mut r = Rig::new(flat32());
    r.max = 3;
    r.cpu.regs.rdi = MMIO;
    r.cpu.regs.rcx = 5;
    r.code(&[0xf3, 0xaa]);
    let d = r.run(Expect::Memory).unwrap();
    assert!(!d.completed);
    assert_eq!(
        (r.cpu.regs.rcx, r.cpu.regs.rdi, r.cpu.regs.rip),
        (2, MMIO + 3, CODE)
    );
    let d = r.run(Expect::Memory).unwrap();
    assert!(d.completed);
    assert_eq!((r.cpu.regs.rcx, r.cpu.regs.rip), (0, CODE + 2));
}

#[test]
fn movs_from_ram_to_mmio_and_lods() {
    let mut r = Rig::new(flat32());
    r.ram.bytes[0x3000..0x3008].copy_from_slice(b"splitvis");
    r.cpu.regs.rsi = 0x3000;
    r.cpu.regs.rdi = MMIO;
    r.cpu.regs.rcx = 2;
    r.go(&[0xf3, 0xa5]); // rep movsd
    assert_eq!(r.bus.get(MMIO, 8), u64::from_le_bytes(*b"splitvis"));
    assert_eq!((r.cpu.regs.rsi, r.cpu.regs.rdi), (0x3008, MMIO + 8));
    r.cpu.regs.rsi = MMIO + 1;
    r.go(&[0xac]); // lodsb
    assert_eq!(r.cpu.regs.rax & 0xff, u64::from(b'p'));
}

#[test]
fn rep_outs_and_ins_in_real_mode_with_16_bit_addressing() {
    let mut r = Rig::new(real16());
    r.ram.bytes[0xfffe..0x10000].copy_from_slice(b"ok");
    r.cpu.regs.rsi = 0xdead_fffe; // only SI counts
    r.cpu.regs.rcx = 0xffff_0002;
    r.cpu.regs.rdx = 0x3f8;
    r.code(&[0xf3, 0x6e]); // rep outsb
    let d = r.run(Expect::StringIo).unwrap();
    assert_eq!(d.mnemonic, Mnemonic::Outsb);
    assert_eq!(
        r.bus.log,
        [
            ('o', 0x3f8, 1, u64::from(b'o')),
            ('o', 0x3f8, 1, u64::from(b'k'))
        ]
    );
    assert_eq!(
        r.cpu.regs.rsi, 0xdead_0000,
        "SI wrapped, the upper half kept"
    );
    assert_eq!(r.cpu.regs.rcx, 0xffff_0000);
    assert_eq!(r.cpu.regs.rip, CODE + 2);
    // insw: ES:DI
    r.bus.log.clear();
    r.cpu.regs.rdi = 0x2000;
    r.code(&[0x6d]);
    r.run(Expect::StringIo).unwrap();
    assert_eq!(r.ram.bytes[0x2000..0x2002], [0x44, 0x33]);
    assert_eq!(r.cpu.regs.rdi, 0x2002);
    // A MOV is not what a string I/O exit expects.
    r.code(&[0x89, 0x07]);
    assert!(matches!(
        r.run(Expect::StringIo),
        Err(EmuError::Mismatch { .. })
    ));
}

#[test]
fn outs_with_a_segment_override_and_address_size_prefix() {
    let mut r = Rig::new(flat32());
    r.cpu.segs[SegReg::Es as usize].base = 0x4000;
    r.ram.bytes[0x4010] = b'z';
    r.cpu.regs.rsi = 0xffff_0010; // the 0x67 prefix uses SI only
    r.cpu.regs.rdx = 0xe9;
    r.code(&[0x67, 0x26, 0x6e]); // outsb es:[si] with a16
    r.run(Expect::StringIo).unwrap();
    assert_eq!(r.bus.log, [('o', 0xe9, 1, u64::from(b'z'))]);
    assert_eq!(r.cpu.regs.rsi, 0xffff_0011);
}

#[test]
fn a_stopping_port_write_ends_a_rep_outs() {
    let mut r = Rig::new(flat32());
    r.bus.stop_on_port = Some(0xf4);
    r.cpu.regs.rsi = 0x3000;
    r.cpu.regs.rcx = 10;
    r.cpu.regs.rdx = 0xf4;
    r.code(&[0xf3, 0x6e]);
    let d = r.run(Expect::StringIo).unwrap();
    assert_eq!(d.outcome, WriteOutcome::Stop { status: 0 });
    assert_eq!(r.bus.log.len(), 1);
}

#[test]
fn segment_limits_and_types_fault() {
    let mut r = Rig::new(real16());
    r.cpu.regs.rbx = 0xffff;
    // mov ax, [bx]: crosses the 64 KiB limit
    assert_eq!(r.fault(&[0x8b, 0x07]), Fault::gp(0));
    // mov ax, [bp]: SS
    r.cpu.regs.rbp = 0xffff;
    assert_eq!(r.fault(&[0x8b, 0x46, 0x00]), Fault::ss(0));

    let mut r = Rig::new(flat32());
    r.cpu.segs[SegReg::Ds as usize].limit = 0x0fff;
    r.cpu.regs.rbx = 0x0ffe;
    assert_eq!(r.fault(&[0x8b, 0x03]), Fault::gp(0), "dword past the limit");
    r.cpu.regs.rbx = 0x0ffc;
    r.go(&[0x8b, 0x03]);
    // A read-only data segment refuses writes.
    r.cpu.segs[SegReg::Ds as usize].attrib &= !attr::WRITABLE_READABLE;
    assert_eq!(r.fault(&[0x89, 0x03]), Fault::gp(0));
    // A null (unusable) segment refuses everything.
    r.cpu.segs[SegReg::Es as usize].attrib = 0;
    assert_eq!(r.fault(&[0x26, 0x8b, 0x03]), Fault::gp(0));
    // Expand-down: offsets at or below the limit are out.
    r.cpu.segs[SegReg::Ds as usize].attrib |= attr::EXPAND_DOWN | attr::WRITABLE_READABLE;
    assert_eq!(r.fault(&[0x8b, 0x03]), Fault::gp(0));
    r.cpu.regs.rbx = MMIO;
    r.go(&[0x8b, 0x03]);
}

#[test]
fn canonical_addresses_in_64_bit_mode() {
    let mut r = Rig::long();
    r.cpu.regs.rbx = 0x0000_8000_0000_0000;
    assert_eq!(r.fault(&[0x48, 0x8b, 0x03]), Fault::gp(0));
    r.cpu.regs.rsp = 0x0000_8000_0000_0000;
    assert_eq!(r.fault(&[0x48, 0x8b, 0x04, 0x24]), Fault::ss(0));
}

#[test]
fn rip_relative_and_64_bit_operands() {
    let mut r = Rig::long();
    // mov rax, [rip + disp32]: RIP-relative from the next instruction.
    let disp = (0x5000i64 - (CODE.cast_signed() + 7)) as i32;
    let d = disp.to_le_bytes();
    r.ram.put64(0x5000, 0x0123_4567_89ab_cdef);
    r.go(&[0x48, 0x8b, 0x05, d[0], d[1], d[2], d[3]]);
    assert_eq!(r.cpu.regs.rax, 0x0123_4567_89ab_cdef);
    // mov qword [rbx], -1 (imm32 sign-extended)
    r.cpu.regs.rbx = MMIO + 8;
    r.go(&[0x48, 0xc7, 0x03, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(r.bus.get(MMIO + 8, 8), u64::MAX);
    // movsxd r8, dword [rbx]
    r.go(&[0x4c, 0x63, 0x03]);
    assert_eq!(r.cpu.regs.r8, u64::MAX);
    // mov r9b, [rbx] with REX: r9b, not ch
    r.cpu.regs.r9 = 0;
    r.go(&[0x44, 0x8a, 0x0b]);
    assert_eq!(r.cpu.regs.r9, 0xff);
}

#[test]
fn page_faults_carry_cr2_and_the_error_code() {
    let mut r = Rig::long();
    // Unmap the 2 MiB page at 0: instruction fetch faults.
    r.ram.put64(0x12000, 0);
    r.code(&[0x90]);
    let mut rig = r;
    rig.ram.bytes[CODE as usize] = 0x90;
    match rig.run(Expect::Memory) {
        Err(EmuError::Fault(f)) => {
            assert_eq!(f.vector, 14);
            assert_eq!(f.cr2, Some(CODE));
            assert_eq!(f.error_code, Some(0), "not present, read, supervisor");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_page_crossing_access_is_split() {
    let mut r = Rig::new(flat32());
    r.cpu.regs.rbx = MMIO + 0xffe;
    r.cpu.regs.rax = 0xaabb_ccdd;
    r.go(&[0x89, 0x03]);
    assert_eq!(r.bus.get(MMIO + 0xffe, 4), 0xaabb_ccdd);
    assert_eq!(
        r.bus.log,
        [
            ('w', MMIO + 0xffe, 2, 0xccdd),
            ('w', MMIO + 0x1000, 2, 0xaabb)
        ]
    );
}

#[test]
fn garbage_and_unsupported_instructions_are_reported() {
    let mut r = Rig::new(flat32());
    r.code(&[0x0f, 0x0b]); // ud2
    assert!(matches!(
        r.run(Expect::Memory),
        Err(EmuError::Mismatch { .. })
    ));
    r.code(&[0xf0, 0x8b, 0x03]); // lock mov: invalid
    assert!(matches!(
        r.run(Expect::Memory),
        Err(EmuError::Undecodable(_))
    ));
    r.code(&[0x0f, 0x58, 0x03]); // addps xmm0, [ebx]
    match r.run(Expect::Memory) {
        Err(e @ EmuError::Unsupported { .. }) => {
            assert_eq!(std::format!("{e}"), "cannot emulate addps [0f 58 03]");
        }
        other => panic!("{other:?}"),
    }
    r.code(&[0x64, 0x8b, 0x03]); // mov eax, fs:[ebx]
    assert!(matches!(
        r.run(Expect::Memory),
        Err(EmuError::SegmentUnknown {
            seg: SegReg::Fs,
            ..
        })
    ));
}

#[test]
fn executing_from_mmio_is_reported() {
    let mut r = Rig::new(flat32());
    r.cpu.regs.rip = MMIO;
    assert_eq!(
        r.run(Expect::Memory),
        Err(EmuError::FetchOutsideRam { gpa: MMIO })
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random bytes in every mode never panic; whatever happens is an
    /// orderly result.
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 1..16),
        mode in 0u8..3,
        regs in proptest::array::uniform8(any::<u64>()),
        rflags in any::<u64>(),
    ) {
        let mut r = match mode {
            0 => Rig::new(real16()),
            1 => Rig::new(flat32()),
            _ => Rig::long(),
        };
        for (i, v) in regs.iter().enumerate() {
            // Keep some registers near the MMIO window so accesses land there.
            let v = if i % 2 == 0 { MMIO + (v & 0xfff) } else { *v };
            r.cpu.set_gpr(i, v);
        }
        r.cpu.regs.rflags = (rflags & 0x0cd5) | 2;
        r.max = 64;
        r.code(&bytes);
        let _ = r.run(Expect::Memory);
        r.cpu.regs.rip = CODE;
        let _ = r.run(Expect::StringIo);
    }
}

#[test]
fn rep_outsb_through_pae_tables() {
    let mut r = Rig::new(flat32());
    let (pdpt, pd0, pd3, pt_low, pt_alias) = (0x10000u64, 0x11000, 0x12000, 0x13000, 0x14000);
    for i in 0..256u64 {
        r.ram.put64(pt_low + i * 8, (i << 12) | 3);
        r.ram.put64(pt_alias + i * 8, (0x1000 + (i << 12)) | 3);
    }
    r.ram.put64(pd0, pt_low | 3);
    r.ram.put64(pd3, pt_alias | 3);
    r.ram.put64(pdpt, pd0 | 1);
    r.ram.put64(pdpt + 24, pd3 | 1);
    r.cpu.cr0 |= CR0_PG;
    r.cpu.cr4 |= crate::vcpu::CR4_PAE;
    r.cpu.cr3 = pdpt;
    r.ram.bytes[0x2372..0x2375].copy_from_slice(b"pae");
    r.cpu.regs.rsi = 0xc000_1372;
    r.cpu.regs.rcx = 3;
    r.cpu.regs.rdx = 0x3f8;
    r.code(&[0xf3, 0x6e]);
    let d = r.run(Expect::StringIo);
    assert!(d.is_ok(), "{d:?}");
    assert_eq!(r.bus.log.len(), 3);
}

#[test]
fn repe_cmps_against_mmio_stops_at_the_first_difference() {
    let mut r = Rig::new(flat32());
    r.ram.bytes[0x3000..0x3008].copy_from_slice(b"splitvis");
    r.bus.set(MMIO, 8, u64::from_le_bytes(*b"splitXis"));
    r.cpu.regs.rsi = 0x3000;
    r.cpu.regs.rdi = MMIO;
    r.cpu.regs.rcx = 8;
    let d = r.go(&[0xf3, 0xa6]); // repe cmpsb
    assert!(d.completed);
    // Six compared: the sixth ('v' - 'X') differs; both pointers and the
    // count have moved past it.
    assert_eq!(
        (r.cpu.regs.rsi, r.cpu.regs.rdi, r.cpu.regs.rcx),
        (0x3006, MMIO + 6, 2)
    );
    assert_eq!(r.cpu.regs.rip, CODE + 2);
    let (_, f) = alu::alu(AluOp::Cmp, 1, u64::from(b'v'), u64::from(b'X'), 2);
    assert_eq!(r.cpu.regs.rflags, f, "CMP's flags of the last pair");
    assert_eq!(r.cpu.regs.rflags & alu::ZF, 0);
    // Equal all the way: the count runs out with ZF set.
    r.cpu.regs.rsi = 0x3000;
    r.cpu.regs.rdi = MMIO;
    r.cpu.regs.rcx = 4;
    r.go(&[0xf3, 0xa6]);
    assert_eq!((r.cpu.regs.rcx, r.cpu.regs.rsi), (0, 0x3004));
    assert_ne!(r.cpu.regs.rflags & alu::ZF, 0);
}

#[test]
fn repne_cmps_with_both_operands_mmio_and_backwards() {
    let mut r = Rig::new(flat32());
    r.bus.set(MMIO, 4, 0x0403_0201);
    r.bus.set(MMIO + 0x100, 4, 0x0403_0909);
    r.cpu.regs.rflags |= alu::DF;
    r.cpu.regs.rsi = MMIO + 3;
    r.cpu.regs.rdi = MMIO + 0x103;
    r.cpu.regs.rcx = 100;
    r.go(&[0xf2, 0xa6]); // repne cmpsb, downwards: the first pair is equal
    assert_eq!(
        (r.cpu.regs.rsi, r.cpu.regs.rdi, r.cpu.regs.rcx),
        (MMIO + 2, MMIO + 0x102, 99)
    );
    assert_ne!(r.cpu.regs.rflags & alu::ZF, 0);
    // Words, going down until two are equal: 0x0909 vs 0x0201 differ,
    // then 0x0403 == 0x0403.
    r.cpu.regs.rsi = MMIO;
    r.cpu.regs.rdi = MMIO + 0x100;
    r.cpu.regs.rflags &= !alu::DF;
    r.cpu.regs.rcx = 10;
    r.go(&[0x66, 0xf2, 0xa7]); // repne cmpsw
    assert_eq!(
        (r.cpu.regs.rsi, r.cpu.regs.rdi, r.cpu.regs.rcx),
        (MMIO + 4, MMIO + 0x104, 8)
    );
    assert_ne!(r.cpu.regs.rflags & alu::ZF, 0);
    // Every read went to the device, source first.
    let reads: Vec<u64> = r.bus.log.iter().map(|e| e.1).collect();
    assert_eq!(&reads[..4], &[MMIO + 3, MMIO + 0x103, MMIO, MMIO + 0x100]);
}

#[test]
fn cmps_without_rep_scas_and_a_zero_count() {
    let mut r = Rig::new(flat32());
    r.bus.set(MMIO, 4, 5);
    r.ram.bytes[0x3000..0x3004].copy_from_slice(&7u32.to_le_bytes());
    r.cpu.regs.rsi = 0x3000;
    r.cpu.regs.rdi = MMIO;
    r.cpu.regs.rcx = 0x55;
    r.go(&[0xa7]); // cmpsd: 7 - 5, no REP: RCX untouched
    assert_eq!(
        (r.cpu.regs.rsi, r.cpu.regs.rdi, r.cpu.regs.rcx),
        (0x3004, MMIO + 4, 0x55)
    );
    let (_, f) = alu::alu(AluOp::Cmp, 4, 7, 5, 2);
    assert_eq!(r.cpu.regs.rflags, f);
    // repne scasb finds 0x33 at the third byte.
    r.bus.set(MMIO + 0x10, 4, 0x4433_2211);
    r.cpu.regs.rax = 0x33;
    r.cpu.regs.rdi = MMIO + 0x10;
    r.cpu.regs.rcx = 8;
    r.go(&[0xf2, 0xae]);
    assert_eq!((r.cpu.regs.rdi, r.cpu.regs.rcx), (MMIO + 0x13, 5));
    assert_ne!(r.cpu.regs.rflags & alu::ZF, 0);
    // A zero count touches nothing and keeps the flags.
    let (n, flags) = (r.bus.log.len(), r.cpu.regs.rflags);
    r.cpu.regs.rcx = 0;
    let d = r.go(&[0xf3, 0xa6]);
    assert!(d.completed);
    assert_eq!((r.bus.log.len(), r.cpu.regs.rflags), (n, flags));
}

#[test]
fn a_long_repe_cmps_resumes_and_a_fault_leaves_the_iteration_undone() {
    let mut r = Rig::new(flat32());
    r.max = 2;
    r.cpu.regs.rsi = MMIO;
    r.cpu.regs.rdi = MMIO + 0x100;
    r.cpu.regs.rcx = 5;
    r.code(&[0xf3, 0xa6]);
    let d = r.run(Expect::Memory).unwrap();
    assert!(!d.completed);
    assert_eq!((r.cpu.regs.rcx, r.cpu.regs.rip), (3, CODE));
    let d = r.run(Expect::Memory).unwrap();
    assert!(!d.completed);
    let d = r.run(Expect::Memory).unwrap();
    assert!(d.completed, "all zero: equal until the count ends");
    assert_eq!((r.cpu.regs.rcx, r.cpu.regs.rsi), (0, MMIO + 5));
    // ES:rDI beyond a 16-bit segment limit: #GP, nothing advanced.
    let mut r = Rig::new(real16());
    r.cpu.regs.rsi = 0x10;
    r.cpu.regs.rdi = 0xffff;
    r.cpu.regs.rcx = 3;
    let f = r.fault(&[0xf3, 0x66, 0xa7]); // repe cmpsd: di + 3 > limit
    assert_eq!(f.vector, 13);
    assert_eq!(
        (r.cpu.regs.rsi, r.cpu.regs.rdi, r.cpu.regs.rcx),
        (0x10, 0xffff, 3)
    );
}
