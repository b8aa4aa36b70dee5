/* hello: print a line on COM1, then end the VM with status 0. */
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
    xor al, al                /* status 0 */
    out DEBUG_EXIT, al
    jmp halt_forever

    .section .rodata
message:
    .asciz "hello from the guest\n"

    .section .bss
    .balign 16
    .skip 4096
stack_top:
