/* realmode: a boot sector, run in real mode with no BIOS.
 *
 * What the loader sets up (images/src/loaders.rs, BIOS-less): the sector at
 * 0000:7C00, CS = DS = ES = SS = 0 with 64 KiB limits, DL = 0x80 (the first
 * hard disk), interrupts off, A20 on, the interrupt vector table zero (no
 * BIOS services: everything goes through ports). SP is whatever the stub
 * left (0), so the guest sets up its own stack below the sector.
 *
 * Checks, each printed on COM1: CS:IP is 0000:7Cxx, DL = 0x80, segment
 * arithmetic (0800:0010 and 0000:8010 are the same byte), a REP OUTSB
 * (string port I/O from DS:SI, emulated by the vmm-server), a REP INSB from
 * the UART's scratch register. Ends with status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix
    .code16

#include "com1.inc"

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    mov [boot_drive], dl
    call uart_init
    mov si, offset msg_boot
    call say

    /* Where are we? A near call pushes IP. */
    call here
here:
    pop ax
    cmp ax, offset here
    jne fail
    mov ax, cs
    test ax, ax
    jnz fail
    mov si, offset msg_cs
    call say

    cmp byte ptr [boot_drive], 0x80
    jne fail
    mov si, offset msg_dl
    call say

    /* Real-mode addresses are segment * 16 + offset. */
    mov ax, 0x0800
    mov es, ax
    mov byte ptr es:[0x0010], 0x5a
    xor ax, ax
    mov es, ax
    cmp byte ptr [0x8010], 0x5a
    jne fail
    mov si, offset msg_seg
    call say

    /* String output: the whole line in one REP OUTSB. */
    cld
    mov si, offset msg_outs
    mov cx, offset msg_outs_end
    sub cx, si
    mov dx, COM1_THR
    rep outsb
    cmp si, offset msg_outs_end
    jne fail
    test cx, cx
    jnz fail

    /* String input: 4 bytes from the scratch register into 0000:8100. */
    mov dx, COM1 + 7
    mov al, 0xa5
    out dx, al
    mov di, 0x8100
    mov cx, 4
    rep insb
    cmp dword ptr [0x8100], 0xa5a5a5a5
    jne fail
    cmp di, 0x8104
    jne fail
    mov si, offset msg_ins
    call say

    mov si, offset msg_pass
    call say
    xor al, al
    out DEBUG_EXIT, al
    jmp halt_forever

/* Prints "realmode: " and the string at SI. */
say:
    push si
    mov si, offset prefix
    call uart_puts
    pop si
    jmp uart_puts

fail:
    mov si, offset msg_fail
    call say
    mov al, 1
    out DEBUG_EXIT, al
    jmp halt_forever

    .section .rodata
prefix:   .asciz "realmode: "
msg_boot: .asciz "boot sector in real mode, no BIOS\n"
msg_cs:   .asciz "cs:ip = 0000:7cxx\n"
msg_dl:   .asciz "dl = 0x80 (first hard disk)\n"
msg_seg:  .asciz "0800:0010 is 0000:8010\n"
msg_outs: .ascii "realmode: rep outsb from ds:si\n"
msg_outs_end:
msg_ins:  .asciz "rep insb into es:di\n"
msg_pass: .asciz "all checks passed\n"
msg_fail: .asciz "FAILED\n"

    .section .data
boot_drive: .byte 0
