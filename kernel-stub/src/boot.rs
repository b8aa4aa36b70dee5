//! From the multiboot hand-over to Rust.
//!
//! A multiboot (v1) loader -- QEMU's `-kernel`, GRUB's `multiboot` -- enters
//! `_start32` in 32-bit protected mode, paging off, with EAX = 0x2BADB002 and
//! EBX = the multiboot information. We identity-map the first GiB with 2 MiB
//! pages, enable long mode and call `stub_main`. The header uses the a.out
//! kludge (flag bit 16) so the loader takes the load addresses from it: the
//! image builder patches `load_end_addr`/`bss_end_addr` to cover the payload
//! appended after `__image_end`.

use core::arch::global_asm;

/// Multiboot v1 magic in the header.
const MULTIBOOT_HEADER_MAGIC: u32 = 0x1bad_b002;
/// What the loader leaves in EAX.
const MULTIBOOT_BOOT_MAGIC: u32 = 0x2bad_b002;

global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
    .global multiboot_header
multiboot_header:
    .long 0x1BADB002
    .long 0x00010002                     /* bit 1: memory info; bit 16: address fields */
    .long -(0x1BADB002 + 0x00010002)
    .long multiboot_header               /* header_addr */
    .long __image_start                  /* load_addr */
    .long __image_end                    /* load_end_addr, patched by the image builder */
    .long __image_end                    /* bss_end_addr, patched by the image builder */
    .long _start32                       /* entry_addr */

    .section .bss
    .balign 4096
    .global boot_pml4
boot_pml4: .skip 4096
    .global boot_pdpt
boot_pdpt: .skip 4096
    .global boot_pd
boot_pd:   .skip 4096
boot_stack: .skip 4096
boot_stack_top:

    .section .rodata
    .balign 8
    .global boot_gdt_ptr
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF             /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF             /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.boot, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    movl $boot_stack_top, %esp
    movl %eax, %edi                      /* multiboot magic -> first argument */
    movl %ebx, %esi                      /* multiboot info  -> second argument */

    /* Identity-map 0..1 GiB with 2 MiB supervisor pages. */
    movl $boot_pdpt, %eax
    orl $3, %eax
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $3, %eax
    movl %eax, boot_pdpt
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                      /* present, writable, 2 MiB */
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b
    xorl %ebp, %ebp                      /* the boot CPU */

    /* From here on for every CPU (EBP: 0 on the boot CPU). */
    .global enter_long_mode
enter_long_mode:
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $(1 << 5), %eax                  /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx               /* EFER */
    rdmsr
    orl $(1 << 8), %eax                  /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax                /* PG | PE */
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode

    .code64
long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    testl %ebp, %ebp
    jnz ap_long_mode
    leaq {stack_top}(%rip), %rsp
    call stub_main
2:  cli
    hlt
    jmp 2b
    "#,
    stack_top = sym crate::cpu::KERNEL_STACK_TOP,
    options(att_syntax)
);

// Another CPU's start (`smp`): the start-up IPI lets it run in real mode
// at TRAMPOLINE (vector TRAMPOLINE >> 12), where `smp::start_others`
// copied `ap_trampoline`. It loads a GDT with 32-bit segments, turns
// protection on and jumps into the stub, where it takes the boot CPU's
// page tables and enters long mode with `_start32`'s code, takes its index
// (1, 2, ...) and that CPU's stack, and calls `smp::ap_main(index)`.
// An index past the last stack parks the CPU.
global_asm!(
    r#"
    .section .text.boot, "ax"
    .code16
    .global ap_trampoline, ap_trampoline_end
ap_trampoline:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (ap_gdt_ptr - ap_trampoline + {trampoline})
    movl %cr0, %eax
    orl $1, %eax                         /* PE */
    movl %eax, %cr0
    ljmpl $0x08, $ap_start32
    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF             /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF             /* 0x10: data */
ap_gdt_ptr:
    .word 23
    .long ap_gdt - ap_trampoline + {trampoline}
ap_trampoline_end:

    .code32
ap_start32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $1, %ebp                        /* not the boot CPU */
    jmp enter_long_mode

    .code64
    .global ap_long_mode
ap_long_mode:
    movl $1, %eax
    lock xaddl %eax, {next}(%rip)
    cmpl ${max_cpus}, %eax
    jae 3f
    movl %eax, %edi                      /* the index -> first argument */
    imulq ${per_cpu}, %rax
    leaq {stacks}(%rip), %rsp
    addq %rax, %rsp
    addq ${stack}, %rsp                  /* the top of its first stack */
    call {ap_main}
3:  cli
    hlt
    jmp 3b
    "#,
    trampoline = const crate::smp::TRAMPOLINE,
    next = sym crate::smp::NEXT_INDEX,
    max_cpus = const crate::cpu::MAX_CPUS,
    per_cpu = const 2 * core::mem::size_of::<crate::cpu::Stack>(),
    stack = const core::mem::size_of::<crate::cpu::Stack>(),
    stacks = sym crate::cpu::STACKS,
    ap_main = sym crate::smp::ap_main,
    options(att_syntax)
);

/// The multiboot header fields the stub reads back after the builder patched them.
#[repr(C)]
struct MultibootHeader {
    magic: u32,
    flags: u32,
    checksum: u32,
    header_addr: u32,
    load_addr: u32,
    load_end_addr: u32,
    bss_end_addr: u32,
    entry_addr: u32,
}

extern "C" {
    static multiboot_header: MultibootHeader;
    static __image_end: u8;
}

/// Where the payload starts: right after the stub's own image.
pub fn payload_start() -> u64 {
    (&raw const __image_end) as u64
}

/// Where the loaded image (stub and payload) ends, as patched by the builder.
pub fn image_end() -> u64 {
    // SAFETY: the header is part of the loaded image; volatile because the
    // builder changed it after linking.
    let h = unsafe { core::ptr::read_volatile(&raw const multiboot_header) };
    debug_assert_eq!(h.magic, MULTIBOOT_HEADER_MAGIC);
    u64::from(h.load_end_addr).max(payload_start())
}

/// What the stub needs from the multiboot information.
pub struct BootInfo {
    /// First byte above usable RAM that starts at 1 MiB.
    pub ram_top: u64,
    /// What the command line asks for (`arch=svm|vmx`).
    pub arch: crate::arch::Request,
    /// `unsafe_shadow` is on the command line.
    pub unsafe_shadow: bool,
}

/// Reads the multiboot information before anything can overwrite it
/// (QEMU places it right after the image, where frames are allocated).
fn read_multiboot(magic: u32, mbi: u32) -> Result<BootInfo, &'static str> {
    if magic != MULTIBOOT_BOOT_MAGIC {
        return Err("not started by a multiboot loader (bad magic in EAX)");
    }
    // SAFETY: a multiboot loader passes a valid info structure in EBX; the
    // first GiB is identity-mapped. flags at +0, mem_upper (KiB above 1 MiB) at +8.
    let (flags, mem_upper) = unsafe {
        let p = mbi as usize as *const u32;
        (p.read_volatile(), p.add(2).read_volatile())
    };
    if flags & 1 == 0 {
        return Err("the boot loader gave no memory size (multiboot flag 0)");
    }
    let (arch, unsafe_shadow) = crate::arch::options_from_multiboot(mbi);
    Ok(BootInfo {
        ram_top: 0x10_0000 + u64::from(mem_upper) * 1024,
        arch,
        unsafe_shadow,
    })
}

/// First Rust code: brings up the CPU tables and the console, then the VM.
#[no_mangle]
extern "C" fn stub_main(magic: u32, mbi: u32) -> ! {
    let boot = read_multiboot(magic, mbi);
    crate::console::init();
    crate::cpu::init();
    let boot = match boot {
        Ok(b) => b,
        Err(why) => crate::vm::cannot_run(why),
    };
    crate::vm::start(boot)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::vm::fail(format_args!("stub panic: {info}"))
}
