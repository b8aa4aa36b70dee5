/* triple-fault: load an IDT with limit 0 and execute int3. The breakpoint
 * cannot be delivered (#GP), nor can the #GP (#DF), nor the #DF: the CPU
 * shuts down -- on SVM a SHUTDOWN intercept, exit code 0x7f. */
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
    lidt [empty_idt]
    int3
    jmp halt_forever          /* not reached */

    .section .rodata
message:
    .asciz "triple-fault guest: empty IDT, then int3\n"
    .balign 8
empty_idt:
    .word 0                   /* limit 0: no vector is valid */
    .long 0                   /* base */

    .section .bss
    .balign 16
    .skip 4096
stack_top:
