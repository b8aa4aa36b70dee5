/* cr3switch32: 32-bit paging. NSPACES address spaces (page directories),
 * each mapping 0-4 MiB one to one with one 4 MiB PSE page (which also
 * holds every page table: the mmu-server must write-protect them inside
 * the large page) and its NPAGES pages at 4 MiB through a page table of
 * its own; thousands of CR3 switches with PTE edits and INVLPG, as
 * cr3switch.inc and cr3switch-loop.inc say. Prints the checksum of what
 * it read, which must not depend on how the MMU is virtualized (npt,
 * shadow, baseline). Ends with status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix
    .code32

#define PTE_SIZE 4
#define CR3REG   eax

#include "com1.inc"
#include "print.inc"
#include "cr3switch.inc"
#include "cr3switch-loop.inc"

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say
    call cs_init

    /* Space s: pd_all + s * 4096; PDE 0 = the 4 MiB page at 0, PDE 1 (the
     * window) = its page table. */
    xor ecx, ecx
1:  mov edi, ecx
    shl edi, 12
    add edi, offset pd_all
    mov dword ptr [edi], 0x83     /* present, writable, PS */
    mov eax, ecx
    shl eax, 12
    add eax, offset pt_all
    or eax, 3
    mov [edi + (WINDOW >> 22) * 4], eax
    mov [cs_roots + ecx * 4], edi
    add ecx, 1
    cmp ecx, NSPACES
    jb 1b

    mov eax, [cs_roots]
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10                  /* PSE */
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000            /* PG */
    mov cr0, eax
    jmp paged
paged:
    mov esi, offset msg_paging
    call say
    jmp cs_run

#include "say.inc"

    .section .rodata
prefix:     .asciz "cr3switch32: "
msg_start:  .asciz "flat protected mode, paging off\n"
msg_paging: .asciz "32-bit paging on (cr4.pse, a 4 MiB page at 0)\n"

    .section .bss
    .balign 4096
pd_all: .skip NSPACES * 4096
    .skip 4096
stack_top:
