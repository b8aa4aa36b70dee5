/* pmode: a boot sector that switches from real mode to 32-bit protected
 * mode, as a boot loader does: load a GDT, set CR0.PE, far-jump into a
 * 32-bit code segment, load flat data segments.
 *
 * Entered like `realmode` (0000:7C00, no BIOS). Checks, printed on COM1
 * from 32-bit code: CR0.PE is set, CS is the GDT's 32-bit code selector
 * 0x08, the data segments are flat (a write at 2 MiB reads back, beyond
 * what real mode reaches), a REP OUTSB with 32-bit addressing (emulated by
 * the vmm-server). Ends with status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix

    /* The UART routines are called from 32-bit code. */
    .code32
#include "com1.inc"

    .section .text.start, "ax"
    .code16
    .globl _start
_start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1                 /* PE */
    mov cr0, eax
    ljmp 0x08, offset protected

    .code32
protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov esp, 0x7c00
    call uart_init
    mov esi, offset msg_switched
    call say

    mov eax, cr0
    test eax, 1
    jz fail
    mov ax, cs
    cmp ax, 0x08
    jne fail
    mov esi, offset msg_cs
    call say

    /* Flat 4 GiB data segments: 2 MiB is out of real mode's reach. */
    mov dword ptr [0x200000], 0x600dc0de
    cmp dword ptr [0x200000], 0x600dc0de
    jne fail
    mov esi, offset msg_flat
    call say

    cld
    mov esi, offset msg_outs
    mov ecx, offset msg_outs_end
    sub ecx, esi
    mov dx, COM1_THR
    rep outsb
    test ecx, ecx
    jnz fail

#include "pass-fail.inc"

#include "say.inc"

    .section .rodata
    .balign 8
gdt:
    .quad 0                       /* null */
    .quad 0x00cf9a000000ffff      /* 0x08: code, base 0, limit 4 GiB, 32-bit */
    .quad 0x00cf92000000ffff      /* 0x10: data, base 0, limit 4 GiB */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
prefix:       .asciz "pmode: "
msg_switched: .asciz "real mode -> 32-bit protected mode (lgdt, cr0.pe, far jump)\n"
msg_cs:       .asciz "cr0.pe = 1, cs = 0x08\n"
msg_flat:     .asciz "flat data segments: [2 MiB] reads back\n"
msg_outs:     .ascii "pmode: rep outsb from ds:esi\n"
msg_outs_end:
msg_pass:     .asciz "all checks passed\n"
msg_fail:     .asciz "FAILED\n"
