/* efersvme: an honest guest clears EFER.SVME (bit 12), as any OS may
 * write EFER with the bits it knows, and goes on working.
 *
 * The security review's finding: under nested paging EFER writes were
 * not intercepted, so the guest's WRMSR cleared SVME in the VMCB's save
 * area, the next VMRUN failed its consistency checks (APM vol. 2, 15.5.1:
 * EFER.SVME must be set), QEMU reported VMEXIT_INVALID as the 32-bit
 * value 0xffffffff, and the failure reached the vmm-server as an ordinary
 * exit. The stub must keep SVME set at every VMRUN (it is the host's
 * business, not the guest's) so that this guest runs to its end.
 *
 * The guest reads EFER, writes it back without SVME, then causes exits of
 * several kinds (port writes on COM1, CPUID, RDMSR), reads EFER again and
 * prints both values; it checks that the bits other than SVME read back
 * as written. Ends with status 0, or 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define MSR_EFER   0xC0000080
#define EFER_SVME  (1 << 12)

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call uart_puts

    mov ecx, MSR_EFER
    rdmsr
    mov [efer_before], eax
    mov esi, offset msg_before
    call uart_puts
    mov eax, [efer_before]
    call print_hex32
    call print_nl

    mov ecx, MSR_EFER
    mov eax, [efer_before]
    and eax, ~EFER_SVME
    mov [efer_written], eax
    xor edx, edx
    wrmsr
    /* The next exit (this line's first port access) is the VMRUN that
     * failed. */
    mov esi, offset msg_cleared
    call uart_puts
    mov eax, [efer_written]
    call print_hex32
    call print_nl

    /* More exits of other kinds. */
    xor eax, eax
    cpuid
    mov [vendor], ebx
    mov [vendor + 4], edx
    mov [vendor + 8], ecx
    mov esi, offset msg_cpuid
    call uart_puts
    mov esi, offset vendor
    call uart_puts
    call print_nl
    mov ecx, 20
1:  mov esi, offset msg_tick
    call uart_puts
    mov eax, 21
    sub eax, ecx
    call print_dec32
    call print_nl
    sub ecx, 1
    jnz 1b

    mov ecx, MSR_EFER
    rdmsr
    mov [efer_after], eax
    mov esi, offset msg_after
    call uart_puts
    mov eax, [efer_after]
    call print_hex32
    mov esi, offset msg_svme_clear
    test dword ptr [efer_after], EFER_SVME
    jz 2f
    mov esi, offset msg_svme_set
2:  call uart_puts

    /* Every bit but SVME reads back as written. */
    mov eax, [efer_after]
    xor eax, [efer_written]
    and eax, ~EFER_SVME
    jnz fail

    mov esi, offset msg_pass
    call uart_puts
    xor al, al
    out DEBUG_EXIT, al
    jmp halt_forever

fail:
    mov esi, offset msg_fail
    call uart_puts
    mov al, 1
    out DEBUG_EXIT, al
    jmp halt_forever

    .section .rodata
msg_start:      .asciz "efersvme: flat protected mode\n"
msg_before:     .asciz "efersvme: EFER = "
msg_cleared:    .asciz "efersvme: wrote EFER without SVME: "
msg_cpuid:      .asciz "efersvme: still running after the write; cpuid vendor "
msg_tick:       .asciz "efersvme: exit "
msg_after:      .asciz "efersvme: EFER reads back "
msg_svme_set:   .asciz " (SVME set)\n"
msg_svme_clear: .asciz " (SVME clear)\n"
msg_pass:       .asciz "efersvme: all checks passed\n"
msg_fail:       .asciz "efersvme: FAILED: EFER bits other than SVME changed\n"

    .section .data
efer_before:  .long 0
efer_written: .long 0
efer_after:   .long 0
vendor:       .skip 16

    .section .bss
    .balign 16
    .skip 4096
stack_top:
