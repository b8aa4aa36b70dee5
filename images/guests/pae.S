/* pae: PAE paging (three levels of 64-bit entries: a 4-entry PDPT, page
 * directories with 2 MiB pages and page tables with 4 KiB pages), entered
 * in flat protected mode at 1 MiB.
 *
 * The guest maps 0-2 MiB one to one with 4 KiB pages and 2-8 MiB with
 * 2 MiB pages, the image a second time at 0xC0000000, and the 2 MiB
 * around the vmm-server's scratch registers (0xFEA00000) at 0xD0000000
 * with one large page; then it turns on CR4.PAE and paging. Checks, each
 * printed on COM1: both mappings of the image agree, a write through the
 * alias lands in the image, the 2 MiB pages work, a REP OUTSB from the
 * alias and MMIO through the large page, which the vmm-server emulates by
 * walking these tables. Ends with status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define SCRATCH  0xFEB00000
#define ALIAS    0xC0000000
#define MMIO_VA  0xD0000000
#define IMAGE    0x00100000
#define PRESENT_RW 0x003
#define PAGE_2M    0x083

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say

    /* 0-2 MiB one to one, 4 KiB pages (8-byte entries). */
    mov edi, offset pt_low
    mov eax, PRESENT_RW
    mov ecx, 512
1:  mov [edi], eax
    mov dword ptr [edi + 4], 0
    add eax, 0x1000
    add edi, 8
    loop 1b
    /* 1 MiB of the image at ALIAS. */
    mov edi, offset pt_alias
    mov eax, IMAGE | PRESENT_RW
    mov ecx, 256
2:  mov [edi], eax
    add eax, 0x1000
    add edi, 8
    loop 2b

    mov eax, offset pt_low
    or eax, PRESENT_RW
    mov [pd0], eax
    mov dword ptr [pd0 + 1 * 8], 0x200000 | PAGE_2M
    mov dword ptr [pd0 + 2 * 8], 0x400000 | PAGE_2M
    mov dword ptr [pd0 + 3 * 8], 0x600000 | PAGE_2M
    mov eax, offset pt_alias
    or eax, PRESENT_RW
    mov [pd3 + ((ALIAS >> 21) & 511) * 8], eax
    mov dword ptr [pd3 + ((MMIO_VA >> 21) & 511) * 8], (SCRATCH & ~0x1fffff) | PAGE_2M
    /* PDPTEs carry only P (R/W and U/S are reserved in PAE mode). */
    mov eax, offset pd0
    or eax, 1
    mov [pdpt], eax
    mov eax, offset pd3
    or eax, 1
    mov [pdpt + 3 * 8], eax

    mov eax, cr4
    or eax, 0x20              /* PAE */
    mov cr4, eax
    mov eax, offset pdpt
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000        /* PG */
    mov cr0, eax
    jmp paged
paged:
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

    mov dword ptr [cell + (ALIAS - IMAGE)], 0x2468ace0
    cmp dword ptr [cell], 0x2468ace0
    jne fail
    mov esi, offset msg_write
    call say

    mov dword ptr [0x600020], 0xfeedbeef
    cmp dword ptr [0x600020], 0xfeedbeef
    jne fail
    mov esi, offset msg_2m
    call say

    cld
    mov esi, offset msg_outs + (ALIAS - IMAGE)
    mov ecx, offset msg_outs_end
    sub ecx, offset msg_outs
    mov dx, COM1_THR
    rep outsb
    cmp esi, offset msg_outs_end + (ALIAS - IMAGE)
    jne fail

    /* The scratch registers through the 2 MiB page. */
    mov ebx, MMIO_VA + (SCRATCH & 0x1fffff)
    mov dword ptr [ebx + 0x20], 0x0f0f0f0f
    xor dword ptr [ebx + 0x20], 0xffffffff
    cmp dword ptr [ebx + 0x20], 0xf0f0f0f0
    jne fail
    movzx eax, byte ptr [ebx + 0x21]
    cmp eax, 0xf0
    jne fail
    mov esi, offset msg_mmio
    call say

#include "pass-fail.inc"

#include "say.inc"

    .section .rodata
prefix:     .asciz "pae: "
msg_start:  .asciz "flat protected mode, paging off\n"
msg_paging: .asciz "paging on (cr4.pae, cr0.pg), cr3 = "
msg_alias:  .asciz "0xc0000000 maps the image: the same word through both mappings\n"
msg_write:  .asciz "a write through 0xc0000000 lands in the image\n"
msg_2m:     .asciz "2 MiB page at 6 MiB reads back\n"
msg_outs:   .ascii "pae: rep outsb from 0xc0000000 (emulated through the page tables)\n"
msg_outs_end:
msg_mmio:   .asciz "mmio through a 2 MiB page at 0xd0000000: mov, xor, movzx (emulated)\n"
msg_pass:   .asciz "all checks passed\n"
msg_fail:   .asciz "FAILED\n"

    .section .data
magic: .long 0x5a17715a
cell:  .long 0

    .section .bss
    .balign 4096
pdpt:     .skip 4096
pd0:      .skip 4096
pd3:      .skip 4096
pt_low:   .skip 4096
pt_alias: .skip 4096
    .skip 4096
stack_top:
