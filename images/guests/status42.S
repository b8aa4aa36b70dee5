/* status42: print a line on COM1, then end the VM with status 42. */
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
    mov al, 42
    out DEBUG_EXIT, al
    jmp halt_forever

    .section .rodata
message:
    .asciz "exiting with status 42\n"

    .section .bss
    .balign 16
    .skip 4096
stack_top:
