/* portstorm: nonsense to every port, entered in flat protected mode.
 *
 * The guest writes a changing byte, word or dword to each of ports 0 to
 * 0xFFF and reads each back, sparing only those that end the VM (0x64,
 * whose command 0xFE resets the machine, 0x92, whose bit 0 does (with
 * 0x90-0x93, which wide writes would reach it through), and 0xF4, the
 * debug exit). Then
 * it programs COM1 again -- the storm set its divisor latch and loopback
 * bits -- and says it is still running. A vmm-server that survives prints
 * the unclaimed-port counts in its statistics line. Ends with status 0 on
 * port 0xF4. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define LAST_PORT 0x0fff

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call say

    xor edx, edx
    mov ebx, 0x9e3779b9       /* the nonsense */
1:  cmp dx, 0x64
    je 3f
    cmp dx, DEBUG_EXIT
    je 3f
    mov eax, edx              /* 0x90-0x93: port 0x92's fast reset */
    and eax, ~3
    cmp eax, 0x90
    je 3f
    cmp eax, 0x604            /* the PC board's ACPI PM1a_CNT (SLP_EN: off) */
    je 3f
    cmp eax, 0xcf8            /* and its reset control at 0xCF9 */
    je 3f
    mov eax, ebx
    test dl, 3
    jz 2f
    out dx, al
    in al, dx
    jmp 3f
2:  test dl, 4
    jz 4f
    out dx, ax
    in ax, dx
    jmp 3f
4:  out dx, eax
    in eax, dx
3:  rol ebx, 5
    add ebx, edx
    add edx, 1
    cmp edx, LAST_PORT
    jbe 1b

    call uart_init
    mov esi, offset msg_done
    call say
    xor al, al
    out DEBUG_EXIT, al
    jmp halt_forever

#include "say.inc"

    .section .rodata
prefix:    .asciz "portstorm: "
msg_start: .asciz "writing nonsense to ports 0x000-0xfff (but 0x64, 0x90-0x93, 0xf4, 0x604-0x607 and 0xcf8-0xcfb), reading each back\n"
msg_done:  .asciz "still running after the storm\n"

    .section .bss
    .balign 16
    .skip 4096
stack_top:
