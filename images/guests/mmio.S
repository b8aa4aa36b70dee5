/* mmio: the vmm-server's instruction emulator against its page of scratch
 * registers at guest-physical 0xFEB00000 (outside RAM: every access is a
 * nested page fault the vmm-server emulates), entered in flat protected
 * mode at 1 MiB with paging off.
 *
 * Checks, each printed on COM1: MOV of every width and the moffs form;
 * MOVZX and MOVSX; ADD, SUB, AND, OR, XOR, CMP and TEST with the flags
 * they set; INC, DEC, NEG, NOT; XCHG; LOCK CMPXCHG, both ways; CMPXCHG8B;
 * BTS, BTR, BTC and BT with immediate and register offsets; REP STOSD into
 * the registers, REP MOVSB out of RAM and REP MOVSD back into RAM, with DF
 * set once; a read of unclaimed MMIO (all ones). Ends with status 0 on
 * port 0xF4, or with the number of the failed check. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define REGS      0xFEB00000
#define UNCLAIMED 0xFE000000

/* Next check: number it, then fail with it if the flags say "not equal". */
#define CHECK(n) mov byte ptr [check], n
#define EXPECT_EQ jne fail

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say
    mov ebx, REGS

    CHECK(1)                            /* MOV, every width */
    mov dword ptr [ebx], 0x11223344
    cmp dword ptr [ebx], 0x11223344
    EXPECT_EQ
    mov word ptr [ebx + 4], 0x5566
    mov byte ptr [ebx + 6], 0x77
    mov eax, [ebx + 4]
    cmp eax, 0x00775566
    EXPECT_EQ
    mov al, [ebx + 1]
    cmp al, 0x33
    EXPECT_EQ
    mov eax, [REGS]                     /* moffs */
    cmp eax, 0x11223344
    EXPECT_EQ
    mov esi, offset msg_mov
    call say

    CHECK(2)                            /* MOVZX, MOVSX */
    mov byte ptr [ebx + 8], 0x80
    movzx eax, byte ptr [ebx + 8]
    cmp eax, 0x80
    EXPECT_EQ
    movsx eax, byte ptr [ebx + 8]
    cmp eax, 0xffffff80
    EXPECT_EQ
    movsx eax, word ptr [ebx + 7]
    cmp eax, 0xffff8000
    EXPECT_EQ
    mov esi, offset msg_movx
    call say

    CHECK(3)                            /* ALU with flags */
    mov dword ptr [ebx + 0x10], 0xffffffff
    add dword ptr [ebx + 0x10], 1       /* 0, CF and ZF */
    jnc fail
    jnz fail
    sub dword ptr [ebx + 0x10], 1       /* 0xffffffff, CF and SF */
    jnc fail
    jns fail
    and dword ptr [ebx + 0x10], 0x0f0f0f0f
    cmp dword ptr [ebx + 0x10], 0x0f0f0f0f
    EXPECT_EQ
    or byte ptr [ebx + 0x13], 0xf0
    xor word ptr [ebx + 0x10], 0x0f0f
    cmp dword ptr [ebx + 0x10], 0xff0f0000
    EXPECT_EQ
    mov ecx, 0xff0f0000
    cmp [ebx + 0x10], ecx
    EXPECT_EQ
    test byte ptr [ebx + 0x12], 0xf0    /* 0x0f & 0xf0 = 0: ZF */
    jnz fail
    mov eax, 5
    add eax, [ebx + 0x10]               /* memory source */
    cmp eax, 0xff0f0005
    EXPECT_EQ
    mov esi, offset msg_alu
    call say

    CHECK(4)                            /* INC, DEC, NEG, NOT */
    mov dword ptr [ebx + 0x18], 41
    inc dword ptr [ebx + 0x18]
    cmp dword ptr [ebx + 0x18], 42
    EXPECT_EQ
    dec byte ptr [ebx + 0x18]
    neg dword ptr [ebx + 0x18]
    cmp dword ptr [ebx + 0x18], -41
    EXPECT_EQ
    not dword ptr [ebx + 0x18]
    cmp dword ptr [ebx + 0x18], 40
    EXPECT_EQ
    mov esi, offset msg_incdec
    call say

    CHECK(5)                            /* XCHG, CMPXCHG, CMPXCHG8B */
    mov dword ptr [ebx + 0x20], 7
    mov ecx, 9
    xchg [ebx + 0x20], ecx
    cmp ecx, 7
    EXPECT_EQ
    mov eax, 9
    mov ecx, 10
    lock cmpxchg [ebx + 0x20], ecx      /* equal: stores 10 */
    EXPECT_EQ
    mov eax, 3
    lock cmpxchg [ebx + 0x20], ecx      /* not equal: EAX = 10 */
    je fail
    cmp eax, 10
    EXPECT_EQ
    mov dword ptr [ebx + 0x28], 1
    mov dword ptr [ebx + 0x2c], 2
    mov eax, 1
    mov edx, 2
    mov ecx, 0xcccc
    push ebx
    mov ebx, 0xbbbb
    mov esi, REGS
    lock cmpxchg8b [esi + 0x28]
    pop ebx
    EXPECT_EQ
    cmp dword ptr [ebx + 0x2c], 0xcccc
    EXPECT_EQ
    mov esi, offset msg_xchg
    call say

    CHECK(6)                            /* bit tests */
    mov dword ptr [ebx + 0x30], 0
    mov dword ptr [ebx + 0x34], 0
    bts dword ptr [ebx + 0x30], 3
    jc fail
    mov ecx, 35                         /* bit 3 of the next dword */
    bts [ebx + 0x30], ecx
    cmp dword ptr [ebx + 0x34], 8
    EXPECT_EQ
    btr dword ptr [ebx + 0x30], 3
    jnc fail
    btc dword ptr [ebx + 0x30], 0
    bt dword ptr [ebx + 0x30], 0
    jnc fail
    cmp dword ptr [ebx + 0x30], 1
    EXPECT_EQ
    mov esi, offset msg_bits
    call say

    CHECK(7)                            /* string instructions */
    cld
    mov edi, REGS + 0x100
    mov eax, 0xa5a5a5a5
    mov ecx, 16
    rep stosd
    cmp edi, REGS + 0x140
    EXPECT_EQ
    cmp dword ptr [ebx + 0x13c], 0xa5a5a5a5
    EXPECT_EQ
    mov esi, offset text
    mov edi, REGS + 0x200
    mov ecx, 16
    rep movsb
    mov esi, REGS + 0x200
    mov edi, offset copy
    mov ecx, 4
    rep movsd
    mov esi, offset text
    mov edi, offset copy
    mov ecx, 4
    repe cmpsd
    EXPECT_EQ
    std                                 /* backwards */
    mov edi, REGS + 0x30c
    mov eax, 0x5a5a5a5a
    mov ecx, 4
    rep stosd
    cld
    cmp edi, REGS + 0x2fc
    EXPECT_EQ
    cmp dword ptr [ebx + 0x300], 0x5a5a5a5a
    EXPECT_EQ
    mov esi, offset msg_string
    call say

    CHECK(8)                            /* nothing there: all ones */
    mov eax, [UNCLAIMED]
    cmp eax, 0xffffffff
    EXPECT_EQ
    mov esi, offset msg_unclaimed
    call say

    mov esi, offset msg_pass
    call say
    xor al, al
    out DEBUG_EXIT, al
    jmp halt_forever

fail:
    mov esi, offset msg_fail
    call say
    movzx eax, byte ptr [check]
    call print_dec32
    call print_nl
    mov al, [check]
    out DEBUG_EXIT, al
    jmp halt_forever

#include "say.inc"

    .section .rodata
prefix:        .asciz "mmio: "
msg_start:     .asciz "scratch registers at 0xfeb00000, paging off\n"
msg_mov:       .asciz "mov byte/word/dword and moffs ok\n"
msg_movx:      .asciz "movzx, movsx ok\n"
msg_alu:       .asciz "add, sub, and, or, xor, cmp, test (with flags) ok\n"
msg_incdec:    .asciz "inc, dec, neg, not ok\n"
msg_xchg:      .asciz "xchg, lock cmpxchg (both ways), lock cmpxchg8b ok\n"
msg_bits:      .asciz "bts, btr, btc, bt (immediate and register offsets) ok\n"
msg_string:    .asciz "rep stosd (forwards and backwards), rep movsb, rep movsd ok\n"
msg_unclaimed: .asciz "unclaimed mmio reads all ones\n"
msg_pass:      .asciz "all checks passed\n"
msg_fail:      .asciz "FAILED check "
text:          .ascii "sixteen bytes!!!"

    .section .data
check: .byte 0

    .section .bss
    .balign 16
copy: .skip 16
    .skip 4096
stack_top:
