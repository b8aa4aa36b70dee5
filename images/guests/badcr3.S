/* badcr3: 32-bit paging with CR3 naming a page directory beyond RAM (3
 * GiB with 16 MiB of RAM). Its entries read as not present (see the
 * README), so the first fetch after CR0.PG takes a #PF, whose delivery
 * through the IDT (a linear address, translated by the same directory)
 * takes another: a #DF, and its delivery a third: the CPU shuts down, a
 * triple fault, under nested and shadow paging alike. Every vector of the
 * IDT names a handler that says it was reached and ends with status 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    xor ecx, ecx
1:  mov eax, offset reached
    lea edi, [idt + ecx * 8]
    mov [edi], ax
    mov word ptr [edi + 2], 0x08
    mov word ptr [edi + 4], 0x8e00
    shr eax, 16
    mov [edi + 6], ax
    add ecx, 1
    cmp ecx, 32
    jb 1b
    lidt [idt_descriptor]
    mov esi, offset msg_start
    call uart_puts
    mov eax, 0xc0000000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    /* Not reached: the fetch here faults. */
    mov esi, offset msg_paging
    call uart_puts
    mov al, 2
    out DEBUG_EXIT, al
    jmp halt_forever

reached:
    mov esi, offset msg_reached
    call uart_puts
    mov al, 1
    out DEBUG_EXIT, al
    jmp halt_forever

    .section .rodata
msg_start:   .asciz "badcr3: CR3 = 0xc0000000, beyond RAM; paging on\n"
msg_paging:  .asciz "badcr3: paging works, it should not\n"
msg_reached: .asciz "badcr3: a handler ran, it should not\n"
    .balign 8
idt_descriptor:
    .word 32 * 8 - 1
    .long idt

    .section .bss
    .balign 8
idt: .skip 32 * 8
    .skip 4096
stack_top:
