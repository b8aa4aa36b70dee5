/* exitbench: the guest of `splitvisor bench exits`. A multiboot v1 kernel
 * for the PC board (see pcboard.inc), 32-bit paging with 4 MiB pages,
 * that makes N exits of each kind in turn:
 *
 *  - none:  an empty loop (the reference: no exit at all);
 *  - io:    OUT to port 0x80 (unclaimed under splitvisor);
 *  - cpuid: CPUID leaf 0;
 *  - msr:   RDMSR of MTRRcap (0xFE), which the vmm-server answers;
 *  - hlt:   a local APIC timer one-shot (divide 1, count 1000), then
 *           STI; HLT until it fires (plus the TICR write and the EOI,
 *           both MMIO);
 *  - mmio:  a read of the local APIC version register (an NPF exit under
 *           nested paging, a #PF exit under shadow paging);
 *  - pf:    a PTE write (flipping a page between two frames), INVLPG and a
 *           read through it: under shadow paging the write hits a
 *           write-protected guest page table (a shadow #PF; the
 *           mmu-server emulates it, and every third write with no walk
 *           between unprotects the table, so the read after it misses).
 *
 * The command line picks them: `kind=NAME` (one kind; default every kind
 * in the order above) and `n=N` (decimal, default 10000). Per kind it
 * prints `exitbench: begin KIND` before the loop and
 * `exitbench: end KIND n=N tsc=T` after it (T: TSC cycles of the loop,
 * virtual time under QEMU's -icount, so instructions rather than wall
 * time), so the host times the loop by the lines' arrival. It runs on
 * plain QEMU as well (`-kernel exitbench.elf`), where none of this exits:
 * the baseline, and from a GRUB ISO on plain Bochs. Ends with status 0 on
 * port 0xF4, or 1 for a bad command line, 2 for an unexpected exception;
 * then, for Bochs, "Shutdown" on port 0x8900. */

    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "pcboard.inc"

#define APIC_VER   (LAPIC + 0x30)
#define APIC_LVTT  (LAPIC + 0x320)
#define APIC_TICR  (LAPIC + 0x380)
#define APIC_TDCR  (LAPIC + 0x3e0)
#define V_TIMER    0x40
#define PF_VA      0x02000000        /* the pf kind's page: PDE 8, PTE 0 */
/* The pf kind's page table, at a fixed address so that the stub built
 * with `bench-inline-exits` (kernel-stub/src/bench_inline.rs) knows its
 * writes; inside the 0-16 MiB identity map, above the kernel and the
 * multiboot information. */
#define PF_PT      0x00800000
#define KINDS      7

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call pc_init
    call lapic_setup
    call parse_cmdline
    test eax, eax
    jnz bad_cmdline
    call paging_on

    xor ebx, ebx                     /* kind index */
1:  mov eax, [kind_mask]
    bt eax, ebx
    jnc 2f
    call run_kind
2:  add ebx, 1
    cmp ebx, KINDS
    jb 1b
    SAY "done\n"
    xor al, al
    out DEBUG_EXIT, al
    jmp bochs_shutdown

bad_cmdline:
    SAY "bad command line (want kind=none|io|cpuid|msr|hlt|mmio|pf n=DECIMAL)\n"
    mov al, 1
    out DEBUG_EXIT, al
    /* fall through */

/* Plain Bochs has no debug-exit port (QEMU and splitvisor stop at it):
 * "Shutdown" on port 0x8900 ends Bochs, once COM1 has sent the last
 * line (LSR.TEMT; Bochs writes a character out when it is sent). */
bochs_shutdown:
    mov dx, COM1 + 5
    mov ecx, 0x100000
3:  in al, dx
    test al, 0x40
    jnz 4f
    loop 3b
4:  cld
    mov dx, 0x8900
    mov esi, offset s_shutdown
1:  lodsb
    test al, al
    jz 2f
    out dx, al
    jmp 1b
2:  jmp halt_forever

/* Runs kind EBX [count] times between its begin and end lines. Keeps
 * EBX. */
run_kind:
    push ebx
    SAY "begin "
    mov esi, [kind_names + ebx * 4]
    call uart_puts
    call print_nl
    rdtsc
    mov [tsc0], eax
    mov [tsc0 + 4], edx
    mov ebx, [esp]
    mov ecx, [count]
    call [kind_fns + ebx * 4]
    rdtsc
    sub eax, [tsc0]
    sbb edx, [tsc0 + 4]
    mov [tsc0], eax
    mov [tsc0 + 4], edx
    mov ebx, [esp]
    SAY "end "
    mov esi, [kind_names + ebx * 4]
    call uart_puts
    PUTS " n="
    mov eax, [count]
    call print_dec32
    PUTS " tsc="
    mov eax, [tsc0]
    mov edx, [tsc0 + 4]
    call print_dec64
    call print_nl
    pop ebx
    ret

/* EDX:EAX in decimal: long division by 10, a 32-bit DIV per half.
 * Keeps registers. */
print_dec64:
    push eax
    push ebx
    push ecx
    push edx
    push edi
    mov ebx, 10
    xor ecx, ecx
1:  mov edi, eax                     /* low half */
    mov eax, edx
    xor edx, edx
    div ebx                          /* EAX = high / 10, EDX = high % 10 */
    push eax
    mov eax, edi
    div ebx                          /* EDX:low / 10 */
    mov edi, edx                     /* the digit */
    pop edx                          /* EDX:EAX = the quotient */
    push edi
    add ecx, 1
    mov edi, eax
    or edi, edx
    jnz 1b
2:  pop eax
    add al, '0'
    call uart_putc
    sub ecx, 1
    jnz 2b
    pop edi
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

/* The kinds: ECX iterations each (zero: none). */
k_none:
    test ecx, ecx
    jz 2f
1:  sub ecx, 1
    jnz 1b
2:  ret

k_io:
    test ecx, ecx
    jz 2f
1:  out 0x80, al
    sub ecx, 1
    jnz 1b
2:  ret

k_cpuid:
    mov esi, ecx
    test esi, esi
    jz 2f
1:  xor eax, eax
    cpuid
    sub esi, 1
    jnz 1b
2:  ret

k_msr:
    mov esi, ecx
    test esi, esi
    jz 2f
1:  mov ecx, 0xfe
    rdmsr
    sub esi, 1
    jnz 1b
2:  ret

/* One-shot timer, divide by 1, on V_TIMER; each iteration arms it and
 * halts until the interrupt (counted by pc_isr_common, which EOIs). */
k_hlt:
    mov esi, ecx
    test esi, esi
    jz 2f
    mov dword ptr [APIC_TDCR], 0xb
    mov dword ptr [APIC_LVTT], V_TIMER
1:  mov edi, [pc_counts + V_TIMER * 4]
    mov dword ptr [APIC_TICR], 1000
3:  sti
    hlt
    cli
    cmp [pc_counts + V_TIMER * 4], edi
    je 3b                            /* woken by something else */
    sub esi, 1
    jnz 1b
    mov dword ptr [APIC_LVTT], 0x10000
2:  ret

k_mmio:
    test ecx, ecx
    jz 2f
1:  mov eax, [APIC_VER]
    sub ecx, 1
    jnz 1b
2:  ret

/* Flips PF_VA's PTE between two frames, INVLPG, reads through it. */
k_pf:
    test ecx, ecx
    jz 2f
    mov edx, PF_PT
1:  mov eax, [edx]
    xor eax, [pf_flip]
    mov [edx], eax                   /* through a register, as kernels do (not A3 moffs) */
    invlpg [PF_VA]
    mov eax, [PF_VA]
    sub ecx, 1
    jnz 1b
2:  ret

/* 32-bit paging: 0-16 MiB and the APICs (0xFEC00000-0xFEFFFFFF, uncached)
 * identity-mapped with 4 MiB pages, PF_VA through a page table. */
paging_on:
    xor eax, eax
    mov edi, offset pd
1:  mov edx, eax
    shl edx, 22
    or edx, 0x83                     /* P, RW, PS */
    mov [edi + eax * 4], edx
    add eax, 1
    cmp eax, 4
    jb 1b
    mov dword ptr [pd + 0x3fb * 4], 0xfec00000 | 0x9b   /* P RW PWT PCD PS */
    cld
    mov edi, PF_PT                   /* RAM that nobody cleared */
    mov ecx, 1024
    xor eax, eax
    rep stosd
    mov eax, PF_PT | 3
    mov [pd + (PF_VA >> 22) * 4], eax
    mov eax, offset pf_frame_a
    or eax, 3
    mov [PF_PT], eax
    mov eax, offset pf_frame_a
    xor eax, offset pf_frame_b
    mov [pf_flip], eax
    mov eax, cr4
    or eax, 0x10                     /* PSE */
    mov cr4, eax
    mov eax, offset pd
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov eax, [PF_VA]                 /* shadow the page table once */
    ret

/* Reads kind= and n= from the multiboot command line into kind_mask and
 * count. EAX = 0, or 1 for a bad command line. */
parse_cmdline:
    mov ebx, [boot_info]
    test dword ptr [ebx], 4          /* flags: cmdline valid */
    jz 9f
    mov esi, [ebx + 16]
    test esi, esi
    jz 9f
    /* Each word: "kind=" or "n="; others are ignored. */
1:  mov al, [esi]
    test al, al
    jz 9f
    cmp al, ' '
    jne 2f
    add esi, 1
    jmp 1b
2:  cmp dword ptr [esi], 0x646e696b  /* "kind" */
    jne 3f
    cmp byte ptr [esi + 4], '='
    jne 3f
    add esi, 5
    xor ebx, ebx
4:  mov edi, [kind_names + ebx * 4]
    push esi
5:  mov al, [edi]
    test al, al
    jz 6f
    cmp al, [esi]
    jne 7f
    add edi, 1
    add esi, 1
    jmp 5b
6:  mov al, [esi]                    /* the name ends the word */
    test al, al
    jz 8f
    cmp al, ' '
    je 8f
7:  pop esi
    add ebx, 1
    cmp ebx, KINDS
    jb 4b
    mov eax, 1
    ret
8:  add esp, 4
    xor eax, eax
    bts eax, ebx
    mov [kind_mask], eax
    jmp 1b
3:  cmp word ptr [esi], 0x3d6e       /* "n=" */
    jne 10f
    add esi, 2
    xor eax, eax
    mov bl, [esi]
    cmp bl, '0'
    jb 12f
    cmp bl, '9'
    ja 12f
11: movzx ebx, byte ptr [esi]
    sub ebx, '0'
    jb 13f
    cmp ebx, 9
    ja 13f
    imul eax, eax, 10
    add eax, ebx
    add esi, 1
    jmp 11b
13: mov [count], eax
    jmp 1b
12: mov eax, 1
    ret
10: mov al, [esi]                    /* skip an unknown word */
    test al, al
    jz 9f
    cmp al, ' '
    je 1b
    add esi, 1
    jmp 10b
9:  xor eax, eax
    ret

    .section .rodata
prefix: .asciz "exitbench: "
s_none:  .asciz "none"
s_io:    .asciz "io"
s_cpuid: .asciz "cpuid"
s_msr:   .asciz "msr"
s_hlt:   .asciz "hlt"
s_mmio:  .asciz "mmio"
s_pf:    .asciz "pf"
s_shutdown: .asciz "Shutdown"
    .balign 4
kind_names: .long s_none, s_io, s_cpuid, s_msr, s_hlt, s_mmio, s_pf
kind_fns:   .long k_none, k_io, k_cpuid, k_msr, k_hlt, k_mmio, k_pf

    .section .data
    .balign 4
kind_mask: .long (1 << KINDS) - 1
count:     .long 10000
tsc0:      .quad 0
pf_flip:   .long 0

    .section .bss
    .balign 4096
pd:          .skip 4096
pf_frame_a:  .skip 4096
pf_frame_b:  .skip 4096
