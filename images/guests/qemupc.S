/* qemupc: what kernels written for QEMU's PC rely on besides the devices
 * the other guests check (issue 11, defect 7), entered in flat protected
 * mode at 1 MiB with paging off. It loads its own GDT and an IDT whose
 * #GP and #UD handlers resume at a recovery label and whose #DB handler
 * logs the address each single-step trap returns to.
 *
 * Checks, each printed on COM1:
 *  1. the AMD legacy performance counters PERF_CTL0-3/PERF_CTR0-3
 *     (MSRs 0xC0010000-7) take writes and read 0 (a PMU that never counts);
 *  2. IA32_APIC_BASE with the x2APIC enable bit raises #GP (CPUID shows
 *     no x2APIC);
 *  3. port 0x92 (System Control Port A): A20 reads set, and reads back
 *     what is written;
 *  4. CMPS and SCAS against MMIO (the vmm-server's scratch registers at
 *     0xFEB00000): REPE CMPSB RAM against MMIO and MMIO against MMIO,
 *     REPNE CMPSB downwards (DF=1), CMPSD, REPNE SCASB, with flags, ESI,
 *     EDI and ECX;
 *  5. RFLAGS.TF: a single-step #DB past RDMSR, IN and CPUID (instructions
 *     the vmm-server completes), past native instructions, after each
 *     iteration of a REP OUTSB; DR6 at the first trap is printed (not
 *     checked: the server cannot set DR6.BS);
 *  6. XSAVE where CPUID shows it (check 12): CPUID.1:ECX.OSXSAVE reads
 *     CR4.OSXSAVE (0, then 1 once set), XGETBV returns the reset value 1,
 *     XSETBV 3 loads XCR0 and CPUID 0xD.0 EBX is 576 (0xD.1 EBX too where
 *     XSAVEC is shown; XSAVES never is), XSETBV raises #GP for PKRU
 *     (hidden), x87 clear, XCR1 and AVX without SSE, XSAVE/XRSTOR of the
 *     SSE state round-trip XMM0, and where CPUID shows AVX XSETBV 7 loads
 *     XCR0; XCR0 goes back to 1. Where CPUID hides XSAVE, setting
 *     CR4.OSXSAVE raises #GP with CR4
 *     unchanged (nested paging: the stub intercepts MOV to CR4 and the
 *     vmm-server refuses bits CPUID hides; shadow paging: the
 *     mmu-server); offered CR4 bits (PGE, OSFXSR, FSGSBASE where CPUID
 *     shows it) are set, read back and cleared without a fault;
 *  RDTSCP: where CPUID shows it (the host has it), WRMSR to TSC_AUX
 *     (0xC0000103) takes a value, RDMSR reads it back and RDTSCP returns it
 *     in ECX; where CPUID hides it, RDMSR of TSC_AUX raises #GP and RDTSCP
 *     raises #UD;
 *  7. in long mode (its own four-level tables, 0-8 MiB one to one): CPUID
 *     hides PCID, and setting CR4.PCIDE raises #GP with CR4 unchanged.
 * Then "all checks passed" and a fast reset through port 0x92 ends the VM
 * (the vmm-server says "the guest reset the machine"). A failed check
 * ends with its number as the status on port 0xF4. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define SCRATCH   0xFEB00000
#define APIC_BASE 0x1B
#define PERF_CTL0 0xC0010000

#define CHECK(n) mov byte ptr [check], n

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    lgdt [gdt_descriptor]
    ljmp 0x08, offset 1f
1:  mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    call uart_init
    mov esi, offset msg_start
    call say

    /* IDT: every vector to `unexpected`, then #DB, #UD and #GP. */
    mov edi, offset idt
    mov ebx, offset unexpected
    mov ecx, 32
2:  call set_gate
    add edi, 8
    sub ecx, 1
    jnz 2b
    mov edi, offset idt + 1 * 8
    mov ebx, offset db_handler
    call set_gate
    mov edi, offset idt + 6 * 8
    mov ebx, offset ud_handler
    call set_gate
    mov edi, offset idt + 13 * 8
    mov ebx, offset gp_handler
    call set_gate
    lidt [idt_descriptor]

    /* 1. PERF_CTL0-3 and PERF_CTR0-3. */
    CHECK(1)
    mov ecx, PERF_CTL0
3:  mov dword ptr [recover], offset fail
    mov eax, 0x00530076       /* enable, OS, USR, event 0x76 */
    mov edx, 0
    wrmsr
    rdmsr
    test eax, eax
    jnz fail
    test edx, edx
    jnz fail
    add ecx, 1
    cmp ecx, PERF_CTL0 + 8
    jne 3b
    mov dword ptr [recover], 0
    mov esi, offset msg_perf
    call say

    /* 2. x2APIC: hidden in CPUID (the ISA board), its enable bit is #GP;
     * offered (the PC board), the enable bit takes, and the APIC goes back
     * to xAPIC mode through disabled, as the SDM's state machine says. */
    CHECK(2)
    mov eax, 1
    cpuid
    test ecx, 1 << 21
    jz 6f
    mov ecx, APIC_BASE
    rdmsr
    mov ebx, eax              /* xAPIC mode, to go back to */
    or eax, 0xc00             /* EN and EXTD */
    mov byte ptr [fault_vec], 0
    mov dword ptr [recover], offset fail
    wrmsr
    rdmsr
    test eax, 0x400
    jz fail
    mov eax, ebx
    and eax, ~0xc00           /* x2APIC -> disabled */
    wrmsr
    mov eax, ebx              /* disabled -> xAPIC */
    wrmsr
    rdmsr
    cmp eax, ebx
    jne fail
    mov dword ptr [recover], 0
    mov esi, offset msg_x2apic_on
    call say
    jmp 7f
6:  mov ecx, APIC_BASE
    rdmsr
    or eax, 0xc00             /* EN and EXTD */
    mov byte ptr [fault_vec], 0
    mov dword ptr [recover], offset 4f
    wrmsr
    jmp fail
4:  cmp byte ptr [fault_vec], 13
    jne fail
    rdmsr
    test eax, 0x400
    jnz fail
    mov esi, offset msg_x2apic
    call say
7:

    /* 3. Port 0x92. */
    CHECK(3)
    in al, 0x92
    cmp al, 0x02
    jne fail
    mov al, 0x00
    out 0x92, al
    in al, 0x92
    cmp al, 0x00
    jne fail
    mov al, 0x02
    out 0x92, al
    in al, 0x92
    cmp al, 0x02
    jne fail
    mov esi, offset msg_port92
    call say

    /* 4. CMPS and SCAS on MMIO. */
    CHECK(4)
    cld
    mov esi, offset pattern
    mov edi, SCRATCH + 0x100
    mov ecx, 10
    rep movsb
    mov esi, offset pattern_x
    mov edi, SCRATCH + 0x200
    mov ecx, 10
    rep movsb
    mov esi, offset pattern           /* RAM against MMIO: all equal */
    mov edi, SCRATCH + 0x100
    mov ecx, 10
    repe cmpsb
    jne fail
    test ecx, ecx
    jnz fail
    cmp esi, offset pattern + 10
    jne fail
    cmp edi, SCRATCH + 0x10a
    jne fail
    mov esi, offset msg_cmps_ram
    call say
    CHECK(5)
    mov esi, SCRATCH + 0x100          /* MMIO against MMIO: 'v' > 'X' */
    mov edi, SCRATCH + 0x200
    mov ecx, 10
    repe cmpsb
    je fail
    jbe fail
    cmp ecx, 4
    jne fail
    cmp esi, SCRATCH + 0x106
    jne fail
    cmp edi, SCRATCH + 0x206
    jne fail
    mov esi, offset msg_cmps_mmio
    call say
    CHECK(6)
    std                               /* downwards: the last bytes match */
    mov esi, SCRATCH + 0x109
    mov edi, SCRATCH + 0x209
    mov ecx, 10
    repne cmpsb
    cld
    jne fail
    cmp ecx, 9
    jne fail
    cmp esi, SCRATCH + 0x108
    jne fail
    cmp edi, SCRATCH + 0x208
    jne fail
    mov esi, SCRATCH + 0x100          /* CMPSD, no REP */
    mov edi, offset pattern
    mov ecx, 0x55
    cmpsd
    jne fail
    cmp ecx, 0x55
    jne fail
    cmp esi, SCRATCH + 0x104
    jne fail
    mov edi, SCRATCH + 0x200          /* REPNE SCASB finds the 'X' */
    mov al, 'X'
    mov ecx, 10
    repne scasb
    jne fail
    cmp ecx, 4
    jne fail
    cmp edi, SCRATCH + 0x206
    jne fail
    mov esi, offset msg_cmps_back
    call say

    /* 5. Single-step. */
    CHECK(7)
    mov eax, 0xffff0ff0
    mov dr6, eax
    mov dword ptr [db_count], 0
    mov dword ptr [db_stop], 7
    mov ecx, PERF_CTL0
    mov esi, offset pattern
    pushfd
    or dword ptr [esp], 0x100
    popfd
    rdmsr                     /* the server's: eax = edx = 0 */
step_rdmsr:
    in al, 0x80               /* the server's */
step_in:
    cpuid                     /* the server's (leaf 0) */
step_cpuid:
    mov ecx, 2                /* native */
step_mov1:
    mov edx, 0x80             /* native */
step_mov2:
    rep outsb                 /* the server's: one trap per iteration */
step_outs:
    nop
    cmp dword ptr [db_count], 7
    jne fail_steps
    mov ebx, offset db_log
    cmp dword ptr [ebx], offset step_rdmsr
    jne fail_steps
    cmp dword ptr [ebx + 4], offset step_in
    jne fail_steps
    cmp dword ptr [ebx + 8], offset step_cpuid
    jne fail_steps
    cmp dword ptr [ebx + 12], offset step_mov1
    jne fail_steps
    cmp dword ptr [ebx + 16], offset step_mov2
    jne fail_steps
    cmp dword ptr [ebx + 20], offset step_mov2   /* first iteration */
    jne fail_steps
    cmp dword ptr [ebx + 24], offset step_outs   /* second, the last */
    jne fail_steps
    cmp esi, offset pattern + 2
    jne fail_steps
    mov esi, offset msg_steps
    call say
    mov esi, offset msg_dr6
    call say
    mov eax, [db_dr6]
    call print_hex32
    call print_nl

    /* 6. XSAVE: where CPUID shows it, the guest owns XCR0 (check 12);
     * where it is hidden, setting CR4.OSXSAVE is #GP and CR4 stays. */
    CHECK(8)
    mov eax, 1
    cpuid
    test ecx, 1 << 26
    jnz xsave_offered
    mov esi, offset msg_noxsave
    call say
    mov byte ptr [fault_vec], 0
    mov dword ptr [recover], offset 5f
    mov eax, cr4
    or eax, 1 << 18
    mov cr4, eax
    mov dword ptr [recover], 0
    jmp fail
5:  cmp byte ptr [fault_vec], 13
    jne fail
    mov eax, cr4
    test eax, 1 << 18
    jnz fail
    mov esi, offset msg_osxsave
    call say
    jmp xsave_done

xsave_offered:
    CHECK(12)
    test ecx, 1 << 27             /* OSXSAVE reads CR4.OSXSAVE: clear */
    jnz fail
    mov esi, offset msg_xsave
    call say
    mov dword ptr [recover], offset fail
    mov eax, cr0                  /* SSE: EM and TS clear, MP set */
    and eax, ~0xc
    or eax, 2
    mov cr0, eax
    mov eax, cr4
    or eax, (1 << 18) | (1 << 9)  /* OSXSAVE, OSFXSR */
    mov cr4, eax
    mov eax, cr4
    test eax, 1 << 18
    jz fail
    mov eax, 1
    cpuid
    test ecx, 1 << 27
    jz fail
    xor ecx, ecx
    xgetbv
    cmp eax, 1                    /* the reset value: x87 */
    jne fail
    test edx, edx
    jnz fail
    mov esi, offset msg_osxsave_on
    call say
    mov eax, 3
    xor edx, edx
    xor ecx, ecx
    xsetbv
    xor ecx, ecx
    xgetbv
    cmp eax, 3
    jne fail
    mov eax, 0xd                  /* EBX: the area for x87|SSE */
    xor ecx, ecx
    cpuid
    cmp ebx, 576
    jne fail
    mov esi, offset msg_xsetbv3
    call say
    mov eax, 0xd                  /* XSAVEC: 0xD.1 EBX, the compacted size */
    mov ecx, 1
    cpuid
    test eax, 1 << 3
    jnz fail                      /* never XSAVES */
    test eax, 1 << 1
    jz 4f
    cmp ebx, 576
    jne fail
    mov esi, offset msg_xsavec
    call say
4:
    mov esi, offset msg_xcr0_offered
    call say
    mov eax, 0xd
    xor ecx, ecx
    cpuid
    call print_hex32
    call print_nl
    /* #GP: a bit CPUID hides (PKRU), x87 clear, XCR1, AVX without SSE;
     * XCR0 stays 3. */
    mov eax, 0x203
    xor ecx, ecx
    call xsetbv_gp
    mov eax, 2
    xor ecx, ecx
    call xsetbv_gp
    mov eax, 3
    mov ecx, 1
    call xsetbv_gp
    mov eax, 5
    xor ecx, ecx
    call xsetbv_gp
    mov dword ptr [recover], offset fail
    xor ecx, ecx
    xgetbv
    cmp eax, 3
    jne fail
    mov esi, offset msg_xsetbv_gp
    call say
    /* XSAVE and XRSTOR of the SSE state round-trip XMM0. */
    mov edi, offset xsave_area
    xor eax, eax
    mov ecx, 1024 / 4
    rep stosd
    mov eax, 0x600dcafe
    movd xmm0, eax
    mov eax, 3
    xor edx, edx
    xsave [xsave_area]
    pxor xmm0, xmm0
    cmp dword ptr [xsave_area + 160], 0x600dcafe  /* XMM0 in the legacy area */
    jne fail
    mov eax, 3
    xor edx, edx
    xrstor [xsave_area]
    movd eax, xmm0
    cmp eax, 0x600dcafe
    jne fail
    mov esi, offset msg_xsave_rt
    call say
    /* AVX where CPUID shows it: XCR0 = 7 and a larger area. */
    mov eax, 1
    cpuid
    test ecx, 1 << 28
    jz 3f
    mov eax, 7
    xor edx, edx
    xor ecx, ecx
    xsetbv
    xor ecx, ecx
    xgetbv
    cmp eax, 7
    jne fail
    mov eax, 0xd
    xor ecx, ecx
    cpuid
    cmp ebx, 576 + 256
    jb fail
    mov eax, 0xd
    mov ecx, 1
    cpuid
    test eax, 1 << 1
    jz 4f
    cmp ebx, 576 + 256            /* compacted: AVX right after the header */
    jne fail
4:  mov esi, offset msg_avx
    call say
3:  mov eax, 1                    /* back to x87 for what follows */
    xor edx, edx
    xor ecx, ecx
    xsetbv
    mov dword ptr [recover], 0
xsave_done:

    /* 6b. Offered CR4 bits are set and cleared without a fault: PGE and
     * OSFXSR, and FSGSBASE where CPUID shows it (a bit the vmm-server
     * applies on VMX too). */
    CHECK(11)
    mov dword ptr [recover], offset fail
    xor eax, eax
    cpuid
    mov edx, (1 << 7) | (1 << 9)
    cmp eax, 7
    jb 6f
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov edx, (1 << 7) | (1 << 9)
    test ebx, 1
    jz 6f
    or edx, 1 << 16
6:  mov ebx, edx
    mov eax, cr4
    or eax, ebx
    mov cr4, eax
    mov eax, cr4
    mov ecx, eax
    and ecx, ebx
    cmp ecx, ebx
    jne fail
    not ebx
    and eax, ebx
    mov cr4, eax
    mov eax, cr4
    not ebx
    test eax, ebx
    jnz fail
    mov dword ptr [recover], 0
    mov esi, offset msg_offered
    call say

    /* RDTSCP: where CPUID shows it, TSC_AUX takes a WRMSR and reads back,
       and RDTSCP returns it in ECX; where CPUID hides it, RDMSR of
       TSC_AUX is #GP and RDTSCP is #UD. */
    CHECK(10)
    mov eax, 0x80000001
    cpuid
    test edx, 1 << 27
    jz 15f
    mov ecx, 0xC0000103
    mov eax, 0x5a17c0de
    xor edx, edx
    mov dword ptr [recover], offset fail
    wrmsr
    xor eax, eax
    rdmsr
    cmp eax, 0x5a17c0de
    jne fail
    xor ecx, ecx
    rdtscp
    mov dword ptr [recover], 0
    cmp ecx, 0x5a17c0de
    jne fail
    mov esi, offset msg_rdtscp_offered
    call say
    jmp 17f
15: mov ecx, 0xC0000103
    mov byte ptr [fault_vec], 0
    mov dword ptr [recover], offset 16f
    rdmsr
    jmp fail
16: cmp byte ptr [fault_vec], 13
    jne fail
    mov byte ptr [fault_vec], 0
    mov dword ptr [recover], offset 18f
    rdtscp
    jmp fail
18: mov dword ptr [recover], 0
    cmp byte ptr [fault_vec], 6
    jne fail
    mov esi, offset msg_tscaux
    call say
17:

    /* 7. Long mode: CPUID hides PCID; whether CR4.PCIDE can be set. */
    CHECK(9)
    mov eax, 1
    cpuid
    test ecx, 1 << 17
    jnz fail
    mov eax, offset pdpt
    or eax, 3
    mov [pml4], eax
    mov eax, offset pd0
    or eax, 3
    mov [pdpt], eax
    mov edi, offset pd0
    mov eax, 0x83
    mov ecx, 4
11: mov [edi], eax
    add eax, 0x200000
    add edi, 8
    sub ecx, 1
    jnz 11b
    mov edi, offset idt64      /* every vector to `unexpected`, #GP */
    mov ebx, offset unexpected
    mov ecx, 32
12: call set_gate64
    add edi, 16
    sub ecx, 1
    jnz 12b
    mov edi, offset idt64 + 13 * 16
    mov ebx, offset gp64_handler
    call set_gate64
    mov eax, cr4
    or eax, 0x20              /* PAE */
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, 0xC0000080       /* EFER.LME */
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    ljmp 0x18, offset long64

    .code64
/* (An ELF32 object cannot relocate 64-bit code's absolute memory
 * operands: addresses go through registers.) */
long64:
    mov eax, offset idt64_descriptor
    lidt [rax]
    mov esi, offset msg_long
    call say
    mov ebx, offset fault_vec
    mov byte ptr [rbx], 0
    mov ebx, offset recover
    mov dword ptr [rbx], offset 13f
    mov rax, cr4
    or rax, 1 << 17
    mov cr4, rax
    mov dword ptr [rbx], 0
    jmp fail
13: mov ebx, offset fault_vec
    cmp byte ptr [rbx], 13
    jne fail
    mov rax, cr4
    test eax, 1 << 17
    jnz fail
    mov esi, offset msg_pcide
    call say

    mov esi, offset msg_pass
    call say
    mov esi, offset msg_reset
    call say
    mov al, 0x03              /* A20 kept, fast reset */
    out 0x92, al
    mov al, 99                /* the reset did not happen */
    out DEBUG_EXIT, al
    jmp halt_forever

gp64_handler:
    add rsp, 8                /* the error code */
    push rax
    push rbx
    mov ebx, offset fault_vec
    mov byte ptr [rbx], 13
    mov ebx, offset recover
    mov eax, [rbx]
    test eax, eax
    jz unexpected
    mov dword ptr [rbx], 0
    mov [rsp + 16], rax       /* the frame's RIP */
    pop rbx
    pop rax
    iretq
    .code32

fail_steps:
    mov esi, offset msg_steps_bad
    call say
    mov eax, [db_count]
    call print_dec32
    mov al, ':'
    call uart_putc
    xor ecx, ecx
9:  cmp ecx, [db_count]
    jae fail
    cmp ecx, 8
    jae fail
    mov al, ' '
    call uart_putc
    mov eax, [db_log + ecx * 4]
    call print_hex32
    add ecx, 1
    jmp 9b

fail:
    cld
    call print_nl
    mov esi, offset msg_fail
    call say
    movzx eax, byte ptr [check]
    call print_dec32
    call print_nl
    mov al, [check]
    out DEBUG_EXIT, al
    jmp halt_forever

/* An interrupt gate at EDI to the handler at EBX (selector 0x08). */
set_gate:
    mov eax, ebx
    mov [edi], ax
    mov word ptr [edi + 2], 0x08
    mov word ptr [edi + 4], 0x8e00
    shr eax, 16
    mov [edi + 6], ax
    ret

/* A 64-bit interrupt gate at EDI to the handler at EBX (selector 0x18). */
set_gate64:
    mov eax, ebx
    mov [edi], ax
    mov word ptr [edi + 2], 0x18
    mov word ptr [edi + 4], 0x8e00
    shr eax, 16
    mov [edi + 6], ax
    mov dword ptr [edi + 8], 0
    mov dword ptr [edi + 12], 0
    ret

/* XSETBV of EAX into XCR[ECX] must raise #GP. */
xsetbv_gp:
    mov byte ptr [fault_vec], 0
    mov dword ptr [recover], offset 1f
    xor edx, edx
    xsetbv
    jmp fail
1:  cmp byte ptr [fault_vec], 13
    jne fail
    ret

gp_handler:
    add esp, 4                /* the error code */
    mov byte ptr [fault_vec], 13
    jmp recover_at
ud_handler:
    mov byte ptr [fault_vec], 6
recover_at:
    cmp dword ptr [recover], 0
    je unexpected
    push eax
    mov eax, [recover]
    mov [esp + 4], eax        /* the frame's EIP */
    mov dword ptr [recover], 0
    pop eax
    iretd

/* Logs the EIP the trap returns to; at db_stop traps it clears TF in the
 * frame. Frame after the two pushes: EIP at esp+8, EFLAGS at esp+16. */
db_handler:
    push eax
    push ebx
    mov ebx, [db_count]
    cmp ebx, 8
    jae 1f
    mov eax, [esp + 8]
    mov [db_log + ebx * 4], eax
    test ebx, ebx
    jnz 1f
    mov eax, dr6
    mov [db_dr6], eax
1:  add ebx, 1
    mov [db_count], ebx
    cmp ebx, [db_stop]
    jb 2f
    and dword ptr [esp + 16], ~0x100
2:  pop ebx
    pop eax
    iretd

unexpected:
    mov esi, offset msg_unexpected
    call say
    mov al, 100
    out DEBUG_EXIT, al
    jmp halt_forever

#include "say.inc"

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff      /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff      /* 0x10: data */
    .quad 0x00af9a000000ffff      /* 0x18: 64-bit code */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
idt_descriptor:
    .word 32 * 8 - 1
    .long idt
idt64_descriptor:
    .word 32 * 16 - 1
    .long idt64, 0
pattern:   .ascii "splitvisor"
pattern_x: .ascii "splitXisor"
prefix:        .asciz "qemupc: "
msg_start:     .asciz "flat protected mode, own GDT and IDT\n"
msg_perf:      .asciz "perf_ctl0-3/perf_ctr0-3 (0xc0010000-7) take writes and read 0\n"
msg_x2apic:    .asciz "no x2apic in cpuid; apic_base with the x2apic enable bit: #GP\n"
msg_x2apic_on: .asciz "x2apic in cpuid; apic_base takes the x2apic enable bit, and goes back to xapic through disabled\n"
msg_port92:    .asciz "port 0x92: a20 reads 1, writes read back\n"
msg_cmps_ram:  .asciz "repe cmpsb ram against mmio: equal, esi/edi/ecx advanced\n"
msg_cmps_mmio: .asciz "repe cmpsb mmio against mmio: stops past the difference, flags above\n"
msg_cmps_back: .asciz "repne cmpsb with df=1, cmpsd, repne scasb on mmio\n"
msg_steps:     .asciz "tf: #db past rdmsr, in, cpuid, two native movs, each rep outsb iteration\n"
msg_dr6:       .asciz "dr6 at the rdmsr step (not checked): "
msg_steps_bad: .asciz "tf: wrong single-step traps: "
msg_noxsave:   .asciz "cpuid hides xsave\n"
msg_osxsave:   .asciz "cr4.osxsave: #GP, cr4 unchanged\n"
msg_xsave:     .asciz "cpuid shows xsave, osxsave clear\n"
msg_osxsave_on: .asciz "cr4.osxsave set; cpuid osxsave 1; xgetbv: 1\n"
msg_xsetbv3:   .asciz "xsetbv 3: xgetbv 3, cpuid 0xd ebx 576\n"
msg_xsavec:    .asciz "cpuid shows xsavec (no xsaves): 0xd.1 ebx 576\n"
msg_xcr0_offered: .asciz "cpuid 0xd.0 eax (not checked): "
msg_xsetbv_gp: .asciz "xsetbv #GP: pkru (hidden), x87 clear, xcr1, avx without sse; xcr0 stays 3\n"
msg_xsave_rt:  .asciz "xsave/xrstor round-trip xmm0\n"
msg_avx:       .asciz "cpuid shows avx: xsetbv 7, xgetbv 7, cpuid 0xd ebx >= 832\n"
msg_offered:   .asciz "cr4.pge, cr4.osfxsr (and cr4.fsgsbase if in cpuid): set and cleared\n"
msg_ud:        .asciz "#UD\n"
msg_tscaux:    .asciz "cpuid hides rdtscp; rdmsr tsc_aux: #GP, rdtscp: #UD\n"
msg_rdtscp_offered: .asciz "cpuid shows rdtscp; tsc_aux takes 0x5a17c0de, rdtscp returns it in ecx\n"
msg_nl:        .asciz "\n"
msg_long:      .asciz "long mode; cpuid hides pcid\n"
msg_pcide:     .asciz "cr4.pcide: #GP, cr4 unchanged\n"
msg_pass:      .asciz "all checks passed\n"
msg_reset:     .asciz "fast reset through port 0x92\n"
msg_fail:      .asciz "FAILED check "
msg_unexpected: .asciz "unexpected exception\n"

    .section .data
check:     .byte 0
fault_vec: .byte 0
    .balign 4
recover:   .long 0
db_count:  .long 0
db_stop:   .long 0
db_dr6:    .long 0
db_log:    .skip 32

    .section .bss
    .balign 64
xsave_area: .skip 1024
    .balign 8
idt:  .skip 32 * 8
    .balign 16
idt64: .skip 32 * 16
    .balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd0:  .skip 4096
    .balign 16
    .skip 4096
stack_top:
