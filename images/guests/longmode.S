/* longmode: from flat protected mode into 64-bit long mode, as a 64-bit
 * kernel's 32-bit entry does: four-level tables, CR4.PAE, EFER.LME (WRMSR),
 * CR0.PG, then a far jump into a 64-bit code segment.
 *
 * The tables map 0-8 MiB one to one with 2 MiB pages, the same again at
 * 0xFFFF800000000000 (the higher half), and the 2 MiB around the
 * vmm-server's scratch registers (0xFEB00000) one to one. Checks, each
 * printed on COM1: CPUID shows long mode; in 64-bit mode EFER.LMA reads
 * back set, the higher half reads the image, a REP OUTSB with 64-bit
 * addresses from the higher half, 64-bit MMIO (MOV, CMPXCHG16B) emulated
 * by the vmm-server; and the hypervisor leaf's signature is printed. Ends
 * with status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define SCRATCH   0xFEB00000
#define EFER      0xC0000080
#define HIGH_HALF 0xFFFF800000000000

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say

    mov eax, 0x80000001
    cpuid
    test edx, 1 << 29
    jz fail
    mov esi, offset msg_cpuid
    call say

    /* PML4[0] and PML4[256] -> PDPT; PDPT[0] -> PD0 (0-8 MiB), PDPT[3] ->
     * PD3 (the 2 MiB page with the scratch registers). */
    mov eax, offset pdpt
    or eax, 3
    mov [pml4], eax
    mov [pml4 + 256 * 8], eax
    mov eax, offset pd0
    or eax, 3
    mov [pdpt], eax
    mov eax, offset pd3
    or eax, 3
    mov [pdpt + 3 * 8], eax
    mov edi, offset pd0
    mov eax, 0x83
    mov ecx, 4
1:  mov [edi], eax
    add eax, 0x200000
    add edi, 8
    loop 1b
    mov dword ptr [pd3 + ((SCRATCH >> 21) & 511) * 8], (SCRATCH & ~0x1fffff) | 0x83

    mov eax, cr4
    or eax, 0x20              /* PAE */
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, EFER
    rdmsr
    or eax, 1 << 8            /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000000        /* PG: long mode becomes active */
    mov cr0, eax
    lgdt [gdt_descriptor]
    ljmp 0x08, offset long64

    .code64
long64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, offset stack_top     /* zero-extends into RSP */
    mov esi, offset msg_long
    call say

    mov ecx, EFER
    rdmsr
    test eax, 1 << 10         /* LMA */
    jz fail
    mov esi, offset msg_lma
    call say

    /* (An ELF32 object cannot relocate 64-bit addresses: add at run time.) */
    movabs r8, HIGH_HALF
    mov eax, offset magic
    add rax, r8
    mov eax, [rax]
    cmp eax, 0x5a17715a
    jne fail
    mov esi, offset msg_high
    call say

    cld
    mov esi, offset msg_outs
    add rsi, r8
    mov ecx, offset msg_outs_end
    sub ecx, offset msg_outs
    mov dx, COM1_THR
    rep outsb
    mov eax, offset msg_outs_end
    add rax, r8
    cmp rsi, rax
    jne fail

    /* 64-bit MMIO: a quadword store and load, then CMPXCHG16B. */
    mov ebx, SCRATCH
    movabs rax, 0x0123456789abcdef
    mov [rbx + 0x40], rax
    mov rcx, [rbx + 0x40]
    cmp rcx, rax
    jne fail
    mov qword ptr [rbx + 0x50], 0
    mov qword ptr [rbx + 0x58], 0
    xor eax, eax
    xor edx, edx
    mov ebx, 0x11
    mov ecx, 0x22
    mov edi, SCRATCH
    lock cmpxchg16b [rdi + 0x50]
    jnz fail
    cmp qword ptr [rdi + 0x58], 0x22
    jne fail
    mov esi, offset msg_mmio
    call say

    /* The hypervisor leaf, as the guest sees it. */
    mov esi, offset msg_hv
    call say
    mov eax, 0x40000000
    cpuid
    mov edi, offset signature
    mov [rdi], ebx
    mov [rdi + 4], ecx
    mov [rdi + 8], edx
    mov esi, offset signature
    call uart_puts
    call print_nl

    .code32
#include "pass-fail.inc"

#include "say.inc"

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff      /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff      /* 0x10: data */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
prefix:    .asciz "longmode: "
msg_start: .asciz "flat protected mode\n"
msg_cpuid: .asciz "cpuid 0x80000001: long mode available\n"
msg_long:  .asciz "64-bit mode (cr4.pae, efer.lme, cr0.pg, far jump to a long code segment)\n"
msg_lma:   .asciz "efer.lma = 1\n"
msg_high:  .asciz "0xffff800000000000 maps the image (pml4 entry 256)\n"
msg_outs:  .ascii "longmode: rep outsb from the higher half (64-bit addresses)\n"
msg_outs_end:
msg_mmio:  .asciz "64-bit mmio: mov qword, lock cmpxchg16b (emulated)\n"
msg_hv:    .asciz "cpuid 0x40000000 signature: "
msg_pass:  .asciz "all checks passed\n"
msg_fail:  .asciz "FAILED\n"

    .section .data
magic:     .long 0x5a17715a
signature: .skip 13

    .section .bss
    .balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd0:  .skip 4096
pd3:  .skip 4096
    .skip 4096
stack_top:
