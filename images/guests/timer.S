/* timer: the PIT's channel 0 at 1 kHz through the 8259 PIC, counted for
 * one virtual second, entered in flat protected mode at 1 MiB.
 *
 * The guest loads a GDT and an IDT (exceptions end the test with status
 * 2; vector 0x20 counts IRQ 0), programs the PIC pair (vector bases 0x20
 * and 0x28, every IRQ but 0 masked) and PIT channel 0 in mode 2 with count
 * 1193 (1000.15 Hz), enables interrupts, and measures one second with PIT
 * channel 2 as Linux calibrates its TSC: twenty one-shot (mode 0) counts
 * of 59659 clocks, each gated on through port 0x61 and polled there (bit
 * 5) until it ends. Checks, printed on COM1: 990 to 1010 ticks arrived in
 * that second; ten HLTs are each woken by a tick; ten ticks arrive while
 * the guest spins on its tick counter in memory, making no exit of its own
 * (the stub's exit deadline must end such a run at each tick; the spin
 * gives up after 2^36 TSC cycles); and no tick arrived while IF was clear
 * (its handler reads the interrupted EFLAGS: QEMU 7.2 once delivered an
 * injected interrupt a second time inside its own handler). Ends with
 * status 0 on port 0xF4, or 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define PIT_CH0   0x40
#define PIT_CH2   0x42
#define PIT_CMD   0x43
#define PORT_B    0x61
#define PIC1_CMD  0x20
#define PIC1_DATA 0x21
#define PIC2_CMD  0xA0
#define PIC2_DATA 0xA1
#define TICK_COUNT   1193     /* 1193182 Hz / 1193 = 1000.15 Hz */
#define WINDOW_COUNT 59659    /* 50 ms of PIT clocks */
#define WINDOWS      20

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say

    lgdt [gdt_descriptor]
    ljmp 0x08, offset reload
reload:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax

    /* IDT: 0-31 exceptions, 0x20 IRQ 0, 0x21-0x2f the other IRQs. */
    xor ecx, ecx
1:  mov eax, offset unexpected
    cmp ecx, 0x20
    jb 2f
    mov eax, offset irq0
    je 2f
    mov eax, offset other_irq
2:  mov edi, offset idt
    lea edi, [edi + ecx * 8]
    mov [edi], ax
    mov word ptr [edi + 2], 0x08
    mov word ptr [edi + 4], 0x8e00    /* present, ring 0, 32-bit interrupt gate */
    shr eax, 16
    mov [edi + 6], ax
    add ecx, 1
    cmp ecx, 0x30
    jb 1b
    lidt [idt_descriptor]

    /* PIC pair: edge-triggered, cascade on IR2, 8086 mode. */
    mov al, 0x11
    out PIC1_CMD, al
    out PIC2_CMD, al
    mov al, 0x20
    out PIC1_DATA, al
    mov al, 0x28
    out PIC2_DATA, al
    mov al, 0x04
    out PIC1_DATA, al
    mov al, 0x02
    out PIC2_DATA, al
    mov al, 0x01
    out PIC1_DATA, al
    out PIC2_DATA, al
    mov al, 0xfe              /* only IRQ 0 */
    out PIC1_DATA, al
    mov al, 0xff
    out PIC2_DATA, al
    mov esi, offset msg_pic
    call say

    /* Channel 0: rate generator, 1 kHz. */
    mov al, 0x34
    out PIT_CMD, al
    mov al, TICK_COUNT & 0xff
    out PIT_CH0, al
    mov al, TICK_COUNT >> 8
    out PIT_CH0, al
    mov esi, offset msg_pit
    call say

    sti
    mov eax, [ticks]
    mov [start_ticks], eax
    mov ebx, WINDOWS
window:
    in al, PORT_B
    and al, 0xfc              /* speaker off */
    or al, 0x01               /* channel 2 gate on */
    out PORT_B, al
    mov al, 0xb0              /* channel 2, LSB then MSB, mode 0 */
    out PIT_CMD, al
    mov al, WINDOW_COUNT & 0xff
    out PIT_CH2, al
    mov al, WINDOW_COUNT >> 8
    out PIT_CH2, al
3:  in al, PORT_B
    test al, 0x20             /* channel 2 output: the count has ended */
    jz 3b
    sub ebx, 1
    jnz window
    cli
    mov ebx, [ticks]
    sub ebx, [start_ticks]
    mov esi, offset prefix
    call uart_puts            /* (clobbers EAX, EDX, ESI) */
    mov eax, ebx
    call print_dec32
    mov esi, offset msg_count
    call uart_puts
    cmp ebx, 990
    jb fail
    cmp ebx, 1010
    ja fail

    /* HLT sleeps until the next tick. */
    mov eax, [ticks]
    mov [start_ticks], eax
    mov ecx, 10
4:  sti
    hlt
    cli
    loop 4b
    mov eax, [ticks]
    sub eax, [start_ticks]
    cmp eax, 10
    jb fail
    mov esi, offset msg_hlt
    call say

    /* Spin on the counter without exits: only a host timer can deliver. */
    rdtsc
    mov edi, edx
    add edi, 16               /* give up 2^36 cycles from now */
    mov ebx, [ticks]
    add ebx, 10
    sti
5:  cmp [ticks], ebx
    jae 6f
    rdtsc
    cmp edx, edi
    jb 5b
    cli
    jmp fail
6:  cli
    mov esi, offset msg_spin
    call say

    mov ebx, [masked]
    test ebx, ebx
    jz 7f
    mov esi, offset prefix
    call uart_puts
    mov eax, ebx
    call print_dec32
    mov esi, offset msg_masked_bad
    call uart_puts
    jmp fail
7:  mov esi, offset msg_masked
    call say

#include "pass-fail.inc"

#include "say.inc"

irq0:
    push eax
    test dword ptr [esp + 12], 0x200  /* the interrupted EFLAGS.IF */
    jnz 1f
    add dword ptr [masked], 1
1:  add dword ptr [ticks], 1
    mov al, 0x20              /* non-specific EOI */
    out PIC1_CMD, al
    pop eax
    iret

other_irq:
    push eax
    mov al, 0x20
    out PIC2_CMD, al
    out PIC1_CMD, al
    pop eax
    iret

unexpected:
    mov esi, offset msg_exception
    call say
    mov al, 2
    out DEBUG_EXIT, al
    jmp halt_forever

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff      /* 0x08: code */
    .quad 0x00cf92000000ffff      /* 0x10: data */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
idt_descriptor:
    .word 0x30 * 8 - 1
    .long idt
prefix:        .asciz "timer: "
msg_start:     .asciz "flat protected mode; gdt and idt loaded next\n"
msg_pic:       .asciz "pic: vector bases 0x20 and 0x28, only irq 0 unmasked\n"
msg_pit:       .asciz "pit channel 0: mode 2, count 1193 (1000.15 Hz)\n"
msg_count:     .asciz " ticks of irq 0 in one virtual second (20 x 50 ms on pit channel 2)\n"
msg_hlt:       .asciz "hlt: 10 halts, each woken by a tick\n"
msg_spin:      .asciz "spin: 10 ticks while spinning without exits\n"
msg_masked:    .asciz "if: no tick arrived while interrupts were disabled\n"
msg_masked_bad: .asciz " ticks arrived while interrupts were disabled\n"
msg_exception: .asciz "unexpected exception\n"
msg_pass:      .asciz "all checks passed\n"
msg_fail:      .asciz "FAILED\n"

    .section .data
    .balign 4
ticks:       .long 0
start_ticks: .long 0
masked:      .long 0

    .section .bss
    .balign 8
idt: .skip 0x30 * 8
    .balign 16
    .skip 4096
stack_top:
