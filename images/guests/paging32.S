/* paging32: 32-bit paging (two-level tables, 4 KiB pages and a 4 MiB PSE
 * page), entered in flat protected mode at 1 MiB.
 *
 * The guest maps the first 4 MiB one to one with a page table, 4-8 MiB
 * with one 4 MiB page, the image a second time at 0xC0000000, and the
 * vmm-server's page of scratch registers (0xFEB00000) at 0xD0000000; then
 * it turns paging on. Checks, each printed on COM1: both mappings of the
 * image read the same word and a write through the alias lands in the
 * image; the 4 MiB page works; a REP OUTSB from the alias, and MMIO at a
 * paged address, which the vmm-server can only emulate by walking these
 * tables; INT3, INTO and INT 0x30 each delivered once while their
 * delivery pushes onto a stack page nothing touched before (under shadow
 * paging that push exits: a shadow #PF during the delivery of a software
 * event, which must not reach the guest's handler twice). Ends with
 * status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "paging32.inc"

#define SCRATCH  0xFEB00000   /* the vmm-server's scratch registers */
#define ALIAS    0xC0000000   /* the image again */
#define MMIO_VA  0xD0000000   /* the scratch registers, paged */
#define IMAGE    0x00100000
#define FRESH    0x00300000   /* pages nothing touches before the INTs */

/* IDT entry `vec`: a 32-bit interrupt gate to `handler` in the current CS. */
.macro GATE vec, handler
    mov eax, offset \handler
    mov word ptr [idt + \vec * 8], ax
    mov word ptr [idt + \vec * 8 + 2], cs
    mov word ptr [idt + \vec * 8 + 4], 0x8e00
    shr eax, 16
    mov word ptr [idt + \vec * 8 + 6], ax
.endm

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say

    /* 0-4 MiB, one to one, 4 KiB pages. */
    FILL_ENTRIES pt_low, PRESENT_RW, 0x1000, 1024
    /* The image (1 MiB of it) again at ALIAS. */
    FILL_ENTRIES pt_alias, IMAGE | PRESENT_RW, 0x1000, 256
    mov dword ptr [pt_mmio], SCRATCH | PRESENT_RW

    PDE_TO pd, 0, pt_low
    mov dword ptr [pd + 4], 0x400000 | LARGE_RW
    PDE_TO pd, ALIAS, pt_alias
    PDE_TO pd, MMIO_VA, pt_mmio
    PAGING_ON pd, CR4_PSE
    mov esi, offset msg_paging
    call say
    mov eax, cr3
    call print_hex32
    call print_nl

    mov eax, [magic]
    cmp eax, 0x5a17715a
    jne fail
    cmp eax, [magic + (ALIAS - IMAGE)]
    jne fail
    mov esi, offset msg_alias
    call say

    mov dword ptr [cell + (ALIAS - IMAGE)], 0x13579bdf
    cmp dword ptr [cell], 0x13579bdf
    jne fail
    mov esi, offset msg_write
    call say

    mov dword ptr [0x400010], 0xfeedbeef
    cmp dword ptr [0x400010], 0xfeedbeef
    jne fail
    mov esi, offset msg_pse
    call say

    cld
    mov esi, offset msg_outs + (ALIAS - IMAGE)
    mov ecx, offset msg_outs_end
    sub ecx, offset msg_outs
    mov dx, COM1_THR
    rep outsb
    cmp esi, offset msg_outs_end + (ALIAS - IMAGE)
    jne fail

    mov dword ptr [MMIO_VA + 0x10], 0xabcd1234
    mov eax, [MMIO_VA + 0x10]
    cmp eax, 0xabcd1234
    jne fail
    add dword ptr [MMIO_VA + 0x10], 0x11111111
    cmp dword ptr [MMIO_VA + 0x10], 0xbcde2345
    jne fail
    mov esi, offset msg_mmio
    call say

    /* The entry state has CS and DS loaded without a GDT: give them one
     * for the gates' CS and IRET to load from. */
    lgdt [gdtr]
    ljmp 0x08, offset .Lflat
.Lflat:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    GATE 3, on_bp
    GATE 4, on_of
    GATE 0x30, on_int30
    lidt [idtr]
    mov ebp, esp
    mov esp, FRESH + 0x1000
    int3
    mov esp, FRESH + 0x2000
    mov al, 0x7f
    add al, 1                   /* OF = 1 */
    into
    mov esp, FRESH + 0x3000
    int 0x30
    mov esp, ebp
    mov esi, offset msg_soft
    call say
    mov eax, [soft_events]
    call print_hex32
    call print_nl
    cmp dword ptr [soft_events], 0x010101
    jne fail

#include "pass-fail.inc"

/* Each counts its event in a byte of soft_events. */
on_bp:
    inc byte ptr [soft_events]
    iretd
on_of:
    inc byte ptr [soft_events + 1]
    iretd
on_int30:
    inc byte ptr [soft_events + 2]
    iretd

#include "say.inc"

    .section .rodata
prefix:     .asciz "paging32: "
msg_start:  .asciz "flat protected mode, paging off\n"
msg_paging: .asciz "paging on (cr0.pg, cr4.pse), cr3 = "
msg_alias:  .asciz "0xc0000000 maps the image: the same word through both mappings\n"
msg_write:  .asciz "a write through 0xc0000000 lands in the image\n"
msg_pse:    .asciz "4 MiB page (pse) at 4 MiB reads back\n"
msg_outs:   .ascii "paging32: rep outsb from 0xc0000000 (emulated through the page tables)\n"
msg_outs_end:
msg_mmio:   .asciz "mmio at 0xd0000000 -> 0xfeb00000: mov and add (emulated through the page tables)\n"
msg_soft:   .asciz "int 0x30, into, int3 onto fresh stack pages, deliveries (a byte each) = "
msg_pass:   .asciz "all checks passed\n"
msg_fail:   .asciz "FAILED\n"

    .section .data
magic: .long 0x5a17715a
cell:  .long 0
soft_events: .long 0
    .balign 8
gdt:   .quad 0
       .quad 0x00cf9a000000ffff   /* 0x08: flat 32-bit code */
       .quad 0x00cf92000000ffff   /* 0x10: flat data */
gdtr:  .word 3 * 8 - 1
       .long gdt
idtr:  .word 0x31 * 8 - 1
       .long idt

    .section .bss
    .balign 4096
pd:       .skip 4096
pt_low:   .skip 4096
pt_alias: .skip 4096
pt_mmio:  .skip 4096
idt:      .skip 0x31 * 8
    .balign 4096
    .skip 4096
stack_top:
