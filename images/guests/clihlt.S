/* clihlt: print a line on COM1, then halt with interrupts off (`cli; hlt`)
 * without writing a status to the debug-exit port. Nothing can wake it, and
 * it never said it passed: the VM must end as a failure (`vm failed: the
 * guest halted with interrupts disabled ... at rip=...`), not with status 0
 * (issue 11, defect 6: a stop is a pass only when the guest says so). */
    .intel_syntax noprefix
    .code32

#include "com1.inc"

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset message
    call uart_puts
    cli
    hlt
    jmp _start                /* not reached */

    .section .rodata
message:
    .asciz "clihlt guest: cli; hlt with no status on port 0xf4\n"

    .section .bss
    .balign 16
    .skip 4096
stack_top:
