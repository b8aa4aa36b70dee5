/* cr3switch64: four-level long-mode paging. NSPACES address spaces (a
 * PML4, a PDPT and a page directory each), each mapping 0-4 MiB one to
 * one with two 2 MiB pages (which also hold every page table) and its
 * NPAGES pages at 4 MiB through a page table of its own; the loop runs in
 * 64-bit mode: thousands of CR3 switches with PTE edits and INVLPG, as
 * cr3switch.inc and cr3switch-loop.inc say. Prints the checksum of what
 * it read, which must not depend on how the MMU is virtualized (npt,
 * shadow, baseline). Ends with status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix
    .code32

#ifndef GUEST_NAME
#define GUEST_NAME "cr3switch64"
#endif
#define PTE_SIZE 8
#define CR3REG   rax
#define EFER     0xC0000080

#include "com1.inc"
#include "print.inc"
#include "cr3switch.inc"
    .code64
#include "cr3switch-loop.inc"
    .code32

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say
    call cs_init

    /* Space s: pml4_all + s * 4096 -> pdpt_all + s * 4096 -> pd_all +
     * s * 4096: PDEs 0 and 1 = 2 MiB pages at 0 and 2 MiB, PDE 2 (the
     * window) = its page table. */
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
    or eax, 3
    mov edi, ecx
    shl edi, 12
    mov [pdpt_all + edi], eax
    lea eax, [pdpt_all + edi + 3]
    mov [pml4_all + edi], eax
    lea eax, [pml4_all + edi]
    mov [cs_roots + ecx * 4], eax
    add ecx, 1
    cmp ecx, NSPACES
    jb 1b

    mov eax, cr4
    or eax, 0x20                  /* PAE */
    mov cr4, eax
    mov eax, [cs_roots]
    mov cr3, eax
    mov ecx, EFER
    rdmsr
    or eax, 1 << 8                /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000000            /* PG: long mode becomes active */
    mov cr0, eax
    lgdt [gdt_descriptor]
    ljmp 0x08, offset long64

    .code64
long64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, offset stack_top
    mov esi, offset msg_paging
    call say
    jmp cs_run
    .code32

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
prefix:     .asciz GUEST_NAME ": "
msg_start:  .asciz "flat protected mode, paging off\n"
msg_paging: .asciz "64-bit mode (four-level paging, 2 MiB pages at 0 and 2 MiB)\n"

    .section .bss
    .balign 4096
pml4_all: .skip NSPACES * 4096
pdpt_all: .skip NSPACES * 4096
pd_all:   .skip NSPACES * 4096
    .skip 4096
stack_top:
