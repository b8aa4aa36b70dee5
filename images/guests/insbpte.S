/* insbpte: shadow coherence when the vmm-server, not the guest's CPU,
 * writes a live page table. Entered in flat protected mode at 1 MiB.
 *
 * 32-bit paging: the first 4 MiB one to one, and VA 0x00800000 through
 * its own page table (pt_test) to frame 0x300000, which holds MARK_A;
 * frame 0x303000 holds MARK_B. The guest reads VA (MARK_A: the shadow
 * MMU now holds that translation and write-protects pt_test), then
 * overwrites pt_test[0] with 0x00303003 by string input from the UART's
 * scratch register (COM1 + 7): `rep insb` of one byte (0x03), then of
 * two (0x30, 0x30). The vmm-server emulates the INS and writes the bytes
 * through its guest-RAM window, past the write protection. Then the
 * guest reloads CR3 (a full TLB flush) and reads VA again: it must see
 * MARK_B. Under shadow paging that holds only when the vmm-server tells
 * the mmu-server which frames it wrote (`ipc_proto::guest_writes`).
 * Prints "insbpte: PASS" and ends with status 0 on port 0xF4, or
 * "insbpte: FAIL ..." and status 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "paging32.inc"

#define TEST_VA    0x00800000
#define FRAME_A    0x00300000
#define FRAME_B    0x00303000
#define MARK_A     0xaaaa1111
#define MARK_B     0xbbbb2222
#define COM1_SCR   0x3ff

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say

    mov dword ptr [FRAME_A], MARK_A
    mov dword ptr [FRAME_B], MARK_B

    /* 0-4 MiB, one to one. */
    FILL_ENTRIES pt_low, PRESENT_RW, 0x1000, 1024
    mov dword ptr [pt_test], FRAME_A | PRESENT_RW
    PDE_TO pd, 0, pt_low
    PDE_TO pd, TEST_VA, pt_test
    PAGING_ON pd, 0
    cmp dword ptr [TEST_VA], MARK_A
    jne fail_a
    mov esi, offset msg_a
    call say

    /* pt_test[0] = 0x00303003: byte 0 is 0x03, bytes 1-2 are 0x30, byte
     * 3 stays 0. */
    cld
    mov dx, COM1_SCR
    mov al, 0x03
    out dx, al
    mov edi, offset pt_test
    mov ecx, 1
    rep insb
    mov al, 0x30
    out dx, al
    mov ecx, 2
    rep insb
    mov eax, [pt_test]
    and eax, 0xffffff9f       /* A and D are the walker's */
    cmp eax, FRAME_B | PRESENT_RW
    jne fail_insb
    mov esi, offset msg_insb
    call say

    mov eax, cr3
    mov cr3, eax
    mov eax, [TEST_VA]
    cmp eax, MARK_B
    jne fail_b
    mov esi, offset msg_pass
    call say
    xor al, al
    out DEBUG_EXIT, al
    jmp halt_forever

fail_a:
    mov esi, offset msg_fail_a
    jmp fail
fail_insb:
    mov esi, offset msg_fail_insb
    jmp fail
fail_b:
    push eax
    mov esi, offset msg_fail_b
    call say
    pop eax
    call print_hex32
    call print_nl
    mov al, 1
    out DEBUG_EXIT, al
    jmp halt_forever
fail:
    call say
    mov al, 1
    out DEBUG_EXIT, al
    jmp halt_forever

#include "say.inc"

    .section .rodata
prefix:        .asciz "insbpte: "
msg_start:     .asciz "flat protected mode, paging off\n"
msg_a:         .asciz "0x00800000 reads frame 0x300000\n"
msg_insb:      .asciz "rep insb from the uart's scratch register rewrote the pte to 0x00303003\n"
msg_pass:      .asciz "PASS: after mov cr3, 0x00800000 reads frame 0x303000\n"
msg_fail_a:    .asciz "FAIL: 0x00800000 does not read frame 0x300000\n"
msg_fail_insb: .asciz "FAIL: rep insb did not write the pte\n"
msg_fail_b:    .asciz "FAIL: stale translation after mov cr3, read "

    .section .bss
    .balign 4096
pd:       .skip 4096
pt_low:   .skip 4096
pt_test:  .skip 4096
    .skip 4096
stack_top:
