/* pcstorm: nonsense to every register of the PC board's interrupt
 * controllers and firmware interface, entered in flat protected mode.
 *
 * With interrupts off, the guest writes changing values to:
 *   1. every 32-bit register slot of the local APIC's xAPIC page (ICR
 *      included: IPIs of every delivery mode, shorthand and destination,
 *      most to APIC IDs that do not exist), reading each back, and to
 *      IA32_APIC_BASE (values with reserved bits set raise #GP);
 *   2. in x2APIC mode (CPUID.1:ECX bit 21), every MSR 0x800-0x8FF, read
 *      and written (absent, read-only and reserved-bit accesses raise
 *      #GP, which the handler skips);
 *   3. the I/O APIC: all 256 register indices through IOWIN (pins of
 *      every delivery mode and destination; indices past the table), and
 *      byte and word accesses all over its page;
 *   4. fw_cfg: 4096 selector writes each followed by data reads, wide
 *      accesses at 0x510-0x51B, data writes;
 *   5. the ACPI PM block 0x600-0x63F, but for PM1a_CNT (0x604-0x605, whose
 *      SLP_EN powers off).
 * Then it sends a fixed IPI to the absent APIC ID 0x0f, prints the ESR it
 * reads after the write-to-update, puts the local APIC back in xAPIC mode
 * at 0xFEE00000, enables interrupts for a moment (whatever the storm left
 * pending arrives; every vector gets an EOI), and says it is still
 * running. None of it may end or hang the VM. Ends with status 0 on port
 * 0xF4. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define LAPIC         0xFEE00000
#define LAPIC_EOI     (LAPIC + 0xB0)
#define LAPIC_ESR     (LAPIC + 0x280)
#define LAPIC_ICR_LO  (LAPIC + 0x300)
#define LAPIC_ICR_HI  (LAPIC + 0x310)
#define IOAPIC        0xFEC00000
#define MSR_APIC_BASE 0x1B
#define APIC_BASE_XAPIC 0xFEE00900   /* base, enabled, BSP */
#define MSR_EOI_X2    0x80B

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say

    lgdt [gdt_descriptor]
    ljmp 0x08, offset reload
reload:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax

    /* IDT: #GP skips the faulting (two-byte: RDMSR, WRMSR) instruction;
     * every other vector is an interrupt that gets an EOI both ways. */
    xor ecx, ecx
1:  mov eax, offset on_interrupt
    cmp ecx, 13
    jne 2f
    mov eax, offset on_gp
2:  lea edi, [idt + ecx * 8]
    mov [edi], ax
    mov word ptr [edi + 2], 0x08
    mov word ptr [edi + 4], 0x8e00
    shr eax, 16
    mov [edi + 6], ax
    add ecx, 1
    cmp ecx, 256
    jb 1b
    lidt [idt_descriptor]

    mov ebp, 0x9e3779b9              /* the nonsense */

    /* 1. The xAPIC page, then IA32_APIC_BASE. */
    mov ecx, MSR_APIC_BASE
    mov eax, APIC_BASE_XAPIC
    xor edx, edx
    wrmsr
    mov edi, LAPIC
3:  call next
    mov [edi], eax
    mov eax, [edi]
    add edi, 0x10
    cmp edi, LAPIC + 0x1000
    jb 3b
    mov ebx, 64
4:  call next
    mov ecx, MSR_APIC_BASE
    mov edx, ebp
    and edx, 0xff                    /* some with bits above MAXPHYADDR */
    wrmsr
    mov ecx, MSR_APIC_BASE
    mov eax, APIC_BASE_XAPIC
    xor edx, edx
    wrmsr                            /* back (may #GP from x2APIC: skipped) */
    sub ebx, 1
    jnz 4b
    call apic_reset
    mov esi, offset msg_xapic
    call say

    /* 2. x2APIC MSRs. */
    mov eax, 1
    cpuid
    test ecx, 1 << 21
    jz 6f
    mov ecx, MSR_APIC_BASE
    mov eax, APIC_BASE_XAPIC | 0x400
    xor edx, edx
    wrmsr
    mov esi, 0x800
5:  mov ecx, esi
    rdmsr
    call next
    mov edx, ebp
    mov ecx, esi
    wrmsr
    add esi, 1
    cmp esi, 0x900
    jb 5b
    call apic_reset
    mov esi, offset msg_x2apic
    call say
    jmp 7f
6:  mov esi, offset msg_no_x2apic
    call say
7:

    /* 3. The I/O APIC: every index, then narrow accesses on its page. */
    xor ebx, ebx
8:  mov [IOAPIC], ebx
    mov eax, [IOAPIC + 0x10]
    call next
    mov [IOAPIC + 0x10], eax
    mov eax, [IOAPIC + 0x10]
    add ebx, 1
    cmp ebx, 256
    jb 8b
    mov edi, IOAPIC
9:  call next
    mov [edi], al
    mov al, [edi]
    mov [edi + 2], ax
    mov ax, [edi + 2]
    add edi, 4
    cmp edi, IOAPIC + 0x100
    jb 9b
    mov esi, offset msg_ioapic
    call say

    /* 4. fw_cfg. */
    mov ebx, 4096
10: call next
    mov dx, 0x510
    out dx, ax
    mov dx, 0x511
    in al, dx
    in al, dx
    in ax, dx
    in eax, dx
    out dx, al
    mov dx, 0x510
    in eax, dx
    mov dx, 0x514
    out dx, eax
    mov dx, 0x518
    out dx, eax
    sub ebx, 1
    jnz 10b
    mov esi, offset msg_fwcfg
    call say

    /* 5. The ACPI PM block, all but PM1a_CNT. */
    mov edx, 0x600
11: cmp edx, 0x604
    je 12f
    cmp edx, 0x605
    je 12f
    call next
    out dx, al
    in al, dx
12: add edx, 1
    cmp edx, 0x640
    jb 11b
    mov esi, offset msg_acpi
    call say

    /* An IPI to the absent APIC ID 0x0f; ESR after the write-to-update. */
    call apic_reset
    mov dword ptr [LAPIC_ESR], 0
    mov dword ptr [LAPIC_ICR_HI], 0x0f << 24
    mov dword ptr [LAPIC_ICR_LO], 0x40     /* fixed, physical, vector 0x40 */
    mov dword ptr [LAPIC_ESR], 0
    mov esi, offset msg_esr
    call say
    mov eax, [LAPIC_ESR]
    call print_hex32
    call print_nl

    /* Whatever is pending, let it in. */
    sti
    mov ecx, 100000
13: pause
    loop 13b
    cli
    mov esi, offset msg_interrupts
    call say
    mov eax, [interrupts]
    call print_dec32
    call print_nl

    call uart_init
    mov esi, offset msg_done
    call say
    xor al, al
    out DEBUG_EXIT, al
    jmp halt_forever

/* The next nonsense value in EAX (and EBP). Keeps other registers. */
next:
    mov eax, ebp
    rol eax, 7
    xor eax, 0x5bd1e995
    add eax, edi
    add eax, ebx
    mov ebp, eax
    ret

/* The local APIC back to a known state: disabled, then xAPIC at
 * 0xFEE00000, software-enabled with spurious vector 0xFF, TPR 0. */
apic_reset:
    push eax
    push ecx
    push edx
    mov ecx, MSR_APIC_BASE
    xor eax, eax
    xor edx, edx
    wrmsr
    mov eax, APIC_BASE_XAPIC
    wrmsr
    mov dword ptr [LAPIC + 0xF0], 0x1FF
    mov dword ptr [LAPIC + 0x80], 0
    pop edx
    pop ecx
    pop eax
    ret

/* #GP: skip the two-byte RDMSR or WRMSR. */
on_gp:
    add esp, 4                       /* the error code */
    add dword ptr [esp], 2
    add dword ptr [gp_count], 1
    iretd

/* Any other vector: count it, EOI in xAPIC mode (x2APIC mode's EOI is
 * an MSR; the xAPIC page then reads as nothing and ignores the write). */
on_interrupt:
    add dword ptr [interrupts], 1
    mov dword ptr [LAPIC_EOI], 0
    iretd

#include "say.inc"

    .section .rodata
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff          /* 0x08: code */
    .quad 0x00cf92000000ffff          /* 0x10: data */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
idt_descriptor:
    .word 256 * 8 - 1
    .long idt
prefix:         .asciz "pcstorm: "
msg_start:      .asciz "nonsense to the local APIC, I/O APIC, fw_cfg and ACPI PM registers\n"
msg_xapic:      .asciz "xapic page and apic base done\n"
msg_x2apic:     .asciz "x2apic msrs 0x800-0x8ff done\n"
msg_no_x2apic:  .asciz "no x2apic in cpuid: skipped its msrs\n"
msg_ioapic:     .asciz "ioapic indices 0-255 and its page done\n"
msg_fwcfg:      .asciz "fw_cfg done\n"
msg_acpi:       .asciz "acpi pm block done\n"
msg_esr:        .asciz "esr after an ipi to the absent apic id 0x0f: "
msg_interrupts: .asciz "interrupts taken afterwards: "
msg_done:       .asciz "still running after the storm\n"

    .section .data
    .balign 4
gp_count:   .long 0
interrupts: .long 0

    .section .bss
    .balign 8
idt: .skip 256 * 8
    .balign 16
    .skip 4096
stack_top:
