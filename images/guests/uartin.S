/* uartin: input through the 16550 UART, entered in flat protected mode.
 *
 * The guest enables the UART's receive interrupt (IER.ERBFI, MCR.OUT2),
 * initializes the PIC with every IRQ masked and makes IRQ 4 level-
 * triggered in the ELCR (port 0x4D0), then reads one line typed on the
 * host console by polling LSR.DR, echoing it. Before reading each byte it
 * reads the PIC's IRR (OCW3): IRQ 4 must be requested while a byte waits,
 * and withdrawn once the last one was read. Checks, printed on
 * COM1: the line, and that IRQ 4 followed the receiver. Ends with status 0
 * on port 0xF4, or 1. Needs input: `echo hello | ...`. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define COM1_RBR (COM1 + 0)
#define COM1_IER (COM1 + 1)
#define LSR_DR   0x01

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say

    /* PIC: initialized, every IRQ masked (IRR still records requests). */
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x01
    out 0x21, al
    mov al, 0xff
    out 0x21, al
    mov al, 0x0a              /* OCW3: read IRR */
    out 0x20, al
    mov dx, 0x4d0             /* ELCR: IRQ 4 level-triggered */
    mov al, 0x10
    out dx, al

    mov dx, COM1_IER
    mov al, 0x01              /* received data available */
    out dx, al

    mov edi, offset line
1:  mov dx, COM1_LSR
    in al, dx
    test al, LSR_DR
    jz 1b
    in al, 0x20               /* IRR */
    test al, 0x10
    jz fail
    mov dx, COM1_RBR
    in al, dx
    mov [edi], al
    add edi, 1
    cmp al, '\n'
    je 2f
    cmp edi, offset line_end
    jb 1b
2:  mov byte ptr [edi], 0
    /* Nothing more to read: IRQ 4 is withdrawn. */
    mov dx, COM1_LSR
    in al, dx
    test al, LSR_DR
    jnz 3f
    in al, 0x20
    test al, 0x10
    jnz fail
3:  mov esi, offset msg_got
    call say
    mov esi, offset line
    call uart_puts
    mov esi, offset msg_irq
    call say

#include "pass-fail.inc"

#include "say.inc"

    .section .rodata
prefix:    .asciz "uartin: "
msg_start: .asciz "waiting for a line on COM1\n"
msg_got:   .asciz "got: "
msg_irq:   .asciz "irq 4 was requested while bytes waited\n"
msg_pass:  .asciz "all checks passed\n"
msg_fail:  .asciz "FAILED\n"

    .section .bss
line: .skip 64
line_end:
    .skip 4
    .balign 16
    .skip 4096
stack_top:
