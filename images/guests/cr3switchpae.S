/* cr3switchpae: PAE paging. NSPACES address spaces, their four-entry
 * PDPTs packed 32 bytes apart in one page (CR3 points into the page),
 * each mapping 0-4 MiB one to one with two 2 MiB pages (which also hold
 * every page table) and its NPAGES pages at 4 MiB through a page table of
 * its own; thousands of CR3 switches with PTE edits and INVLPG, as
 * cr3switch.inc and cr3switch-loop.inc say. Prints the checksum of what
 * it read, which must not depend on how the MMU is virtualized (npt,
 * shadow, baseline). Ends with status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix
    .code32

#define PTE_SIZE 8
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

    /* Space s: PDPT at pdpt_all + 32 s, PDPTE 0 -> pd_all + s * 4096;
     * PDEs 0 and 1 = 2 MiB pages at 0 and 2 MiB, PDE 2 (the window) = its
     * page table. */
    xor ecx, ecx
1:  mov edi, ecx
    shl edi, 12
    add edi, offset pd_all
    mov dword ptr [edi], 0x83             /* present, writable, PS */
    mov dword ptr [edi + 8], 0x200083
    mov eax, ecx
    shl eax, 12
    add eax, offset pt_all
    or eax, 3
    mov [edi + (WINDOW >> 21) * 8], eax
    mov eax, edi
    or eax, 1                             /* PDPTEs carry only P */
    mov edi, ecx
    shl edi, 5
    add edi, offset pdpt_all
    mov [edi], eax
    mov [cs_roots + ecx * 4], edi
    add ecx, 1
    cmp ecx, NSPACES
    jb 1b

    mov eax, cr4
    or eax, 0x20                  /* PAE */
    mov cr4, eax
    mov eax, [cs_roots]
    mov cr3, eax
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
prefix:     .asciz "cr3switchpae: "
msg_start:  .asciz "flat protected mode, paging off\n"
msg_paging: .asciz "pae paging on (2 MiB pages at 0 and 2 MiB, the pdpts 32 bytes apart)\n"

    .section .bss
    .balign 4096
pdpt_all: .skip 4096
pd_all:   .skip NSPACES * 4096
    .skip 4096
stack_top:
