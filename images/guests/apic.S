/* apic: the local APIC at 0xFEE00000 as a PC kernel drives it: a
 * multiboot v1 kernel (see pcboard.inc), flat protected mode, paging off,
 * both 8259s masked.
 *
 * Checks, each printed on COM1:
 *  - IA32_APIC_BASE (MSR 0x1B): enabled (bit 11), base 0xFEE00000, not in
 *    x2APIC mode; the BSP bit is printed;
 *  - SVR := 0x1FF (software enable, spurious vector 0xFF) reads back;
 *    every LVT entry masked;
 *  - the version register: version 0x10-0x15 (an integrated APIC), at
 *    least 4 LVT entries; the ID is printed;
 *  - TPR takes 0xA0 and 0x00;
 *  - timer one-shot: divide by 16 (DCR 0x3 reads back), count 1000,
 *    vector 0x40: it fires, and exactly once in 2^24 more TSC cycles; the
 *    current count then reads 0;
 *  - timer periodic: count 0x10000, vector 0x41: 5 interrupts arrive;
 *    with the LVT entry masked none in 2^25 TSC cycles;
 *  - self-IPI: ICR shorthand self, fixed, vector 0x42 arrives; the
 *    delivery status bit is clear afterwards;
 *  - TPR masking: with TPR 0x80 a self-IPI of vector 0x51 (class 5) is
 *    not delivered and its IRR bit is set; TPR 0 delivers it and clears
 *    the IRR bit;
 *  - nested ISR: vector 0x60's handler turns interrupts on and sends a
 *    self-IPI of 0xA0, which preempts it; in 0xA0's handler both ISR bits
 *    are set, its EOI clears 0xA0's bit (the highest) and leaves 0x60's,
 *    0x60's EOI then clears that one;
 *  - ESR: a self-IPI of vector 3 (illegal, below 16) and an IPI to the
 *    absent APIC ID 0x0F; the ESR after each (write, then read) is
 *    printed, not checked (the SDM's bits: 0x20 send and 0x40 receive
 *    illegal vector, 0x04 send accept error; Bochs 2.7 gives 0x40 and
 *    0x04; QEMU 7.2 gives 0 for both and delivers vector 3 as an
 *    interrupt, which a hook counts and EOIs); the error LVT (vector 0x4E)
 *    count is printed; the IPI to 0x0F must not arrive here;
 *  - TSC deadline, when CPUID.1:ECX bit 24 says so (else a skip line):
 *    LVT timer mode 10b, vector 0x45, MSR 0x6E0 := TSC + 100000: it
 *    fires once and the MSR reads 0 afterwards (the SDM: the timer
 *    disarms itself and clears the MSR; Bochs 2.7 leaves the deadline);
 *  - x2APIC, when CPUID.1:ECX bit 21 says so (else a skip line): APIC_BASE
 *    bit 10 switches; MSR 0x802 (ID) matches the xAPIC ID; MSR 0x803
 *    matches the version; a self-IPI through MSR 0x83F (vector 0x44)
 *    arrives; RDMSR 0x831 (no register) raises #GP; x2APIC -> xAPIC
 *    directly (EN=1, EXTD=0) raises #GP and leaves the mode unchanged;
 *    then disabled and re-enabled in xAPIC mode (the SDM allows it but for
 *    APICs on the 3-wire bus, and Linux relies on it; Bochs 2.7 ignores
 *    every APIC_BASE write once the APIC is disabled).
 * Every wait is bounded (pcboard.inc: wait_count, delay_irq). Status 0 on
 * port 0xF4 when all pass, else the number of failures. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "pcboard.inc"

#define APIC_ID    (LAPIC + 0x20)
#define APIC_VER   (LAPIC + 0x30)
#define APIC_TPR   (LAPIC + 0x80)
#define APIC_PPR   (LAPIC + 0xa0)
#define APIC_SVR   (LAPIC + 0xf0)
#define APIC_ISR   (LAPIC + 0x100)
#define APIC_IRR   (LAPIC + 0x200)
#define APIC_ESR   (LAPIC + 0x280)
#define APIC_ICRLO (LAPIC + 0x300)
#define APIC_ICRHI (LAPIC + 0x310)
#define APIC_LVTT  (LAPIC + 0x320)
#define APIC_LVTE  (LAPIC + 0x370)
#define APIC_TICR  (LAPIC + 0x380)
#define APIC_TCCR  (LAPIC + 0x390)
#define APIC_TDCR  (LAPIC + 0x3e0)
#define ISR_REG(v) (APIC_ISR + ((v) / 32) * 0x10)
#define IRR_REG(v) (APIC_IRR + ((v) / 32) * 0x10)
#define VBIT(v)    (1 << ((v) % 32))
#define SELF       (1 << 18)    /* ICR destination shorthand 01b */
#define MASKED     (1 << 16)
#define PERIODIC   (1 << 17)
#define TSCDEADLINE (2 << 17)
#define MSR_TSC_DEADLINE 0x6e0

#define V_ONESHOT  0x40
#define V_PERIODIC 0x41
#define V_SELF     0x42
#define V_ABSENT   0x43
#define V_X2SELF   0x44
#define V_DEADLINE 0x45
#define V_ERROR    0x4e
#define V_TPR      0x51
#define V_LOW      0x60
#define V_HIGH     0xa0
#define V_ILLEGAL  3

#define COUNT(v)   [pc_counts + (v) * 4]

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call pc_init
    SAY "multiboot v1 kernel, flat protected mode; 8259s masked\n"

    /* IA32_APIC_BASE. */
    mov ecx, MSR_APIC_BASE
    rdmsr
    SAY "apic_base msr "
    push eax
    mov eax, edx
    call print_hex32
    pop eax
    call print_hex32_digits
    test eax, 1 << 8
    jz 1f
    PUTS " (bsp)"
1:  call print_nl
    test edx, edx
    jnz 2f
    mov ebx, eax
    and ebx, 0xfffffc00       /* base, EN, EXTD */
    cmp ebx, LAPIC | (1 << 11)
    jne 2f
    OKAY "apic_base: enabled at 0xfee00000, xapic mode"
    jmp 3f
2:  BAD "apic_base: enabled at 0xfee00000, xapic mode"
3:

    /* Enable through SVR; the spurious vector reads back. */
    call lapic_setup
    mov eax, [APIC_SVR]
    SAY "svr "
    call print_hex32
    call print_nl
    and eax, 0x1ff
    cmp eax, 0x1ff
    jne 1f
    OKAY "svr: enabled, spurious vector 0xff reads back"
    jmp 2f
1:  BAD "svr: enabled, spurious vector 0xff reads back"
2:

    /* ID and version. */
    mov eax, [APIC_ID]
    mov [xapic_id], eax
    SAY "id "
    call print_hex32
    mov eax, [APIC_VER]
    mov [xapic_ver], eax
    PUTS " version "
    call print_hex32
    call print_nl
    movzx ebx, al
    cmp ebx, 0x10
    jb 1f
    cmp ebx, 0x15
    ja 1f
    shr eax, 16
    and eax, 0xff
    cmp eax, 3
    jb 1f
    OKAY "version: integrated apic, 4 or more lvt entries"
    jmp 2f
1:  mov eax, [xapic_ver]
    BAD "version: integrated apic, 4 or more lvt entries"
2:

    /* TPR. */
    mov dword ptr [APIC_TPR], 0xa0
    mov eax, [APIC_TPR]
    cmp eax, 0xa0
    jne 1f
    mov dword ptr [APIC_TPR], 0
    mov eax, [APIC_TPR]
    test eax, eax
    jne 1f
    OKAY "tpr: takes 0xa0 and 0x00"
    jmp 2f
1:  BAD "tpr: takes 0xa0 and 0x00"
2:

    /* Timer, one-shot. */
    mov dword ptr [APIC_TDCR], 0x3
    mov eax, [APIC_TDCR]
    and eax, 0xb
    cmp eax, 0x3
    je 1f
    BAD "timer: dcr divide by 16 reads back"
1:  mov dword ptr [APIC_LVTT], V_ONESHOT
    mov dword ptr [APIC_TICR], 1000
    mov ebx, offset COUNT(V_ONESHOT)
    mov ecx, 1
    call wait_count
    test eax, eax
    jnz 1f
    mov eax, [APIC_TCCR]
    BAD "timer oneshot fires (eax = current count)"
    jmp 2f
1:  mov eax, 1 << 24
    call delay_irq
    mov eax, COUNT(V_ONESHOT)
    cmp eax, 1
    jne 3f
    mov eax, [APIC_TCCR]
    test eax, eax
    jnz 4f
    OKAY "timer oneshot: fired once, current count 0"
    jmp 2f
3:  BAD "timer oneshot fires exactly once (eax = interrupts)"
    jmp 2f
4:  BAD "timer oneshot current count 0 after"
2:

    /* Timer, periodic. */
    mov dword ptr [APIC_LVTT], V_PERIODIC | PERIODIC
    mov dword ptr [APIC_TICR], 0x10000
    mov ebx, offset COUNT(V_PERIODIC)
    mov ecx, 5
    call wait_count
    test eax, eax
    jnz 1f
    mov eax, COUNT(V_PERIODIC)
    BAD "timer periodic: 5 interrupts (eax = interrupts)"
    jmp 2f
1:  OKAY "timer periodic: 5 interrupts"
2:  mov dword ptr [APIC_LVTT], V_PERIODIC | PERIODIC | MASKED
    mov eax, 1 << 20
    call delay_irq
    mov ebx, COUNT(V_PERIODIC)
    mov eax, 1 << 25
    call delay_irq
    mov eax, COUNT(V_PERIODIC)
    SAY "timer periodic: "
    call print_dec32
    PUTS " interrupts in all; lvt timer "
    push eax
    mov eax, [APIC_LVTT]
    call print_hex32
    pop eax
    call print_nl
    sub eax, ebx
    jnz 1f
    OKAY "timer periodic: none while masked"
    jmp 2f
1:  BAD "timer periodic: none while masked (eax = interrupts)"
2:  mov dword ptr [APIC_TICR], 0

    /* Self-IPI. */
    mov eax, V_SELF | SELF
    xor edx, edx
    call icr_send
    mov ebx, offset COUNT(V_SELF)
    mov ecx, 1
    call wait_count
    test eax, eax
    jnz 1f
    mov eax, [APIC_ICRLO]
    BAD "self-ipi arrives (eax = icr low)"
    jmp 2f
1:  mov eax, [APIC_ICRLO]
    test eax, 1 << 12
    jnz 3f
    OKAY "self-ipi arrives, delivery status idle"
    jmp 2f
3:  BAD "self-ipi: delivery status idle (eax = icr low)"
2:

    /* TPR masking. */
    mov dword ptr [APIC_TPR], 0x80
    mov eax, V_TPR | SELF
    xor edx, edx
    call icr_send
    mov eax, 1 << 22
    call delay_irq
    SAY "tpr 0x80, self-ipi 0x51: irr "
    mov eax, [IRR_REG(V_TPR)]
    call print_hex32
    PUTS " ppr "
    mov eax, [APIC_PPR]
    call print_hex32
    PUTS " delivered "
    mov eax, COUNT(V_TPR)
    call print_dec32
    call print_nl
    test eax, eax
    jnz 1f
    mov eax, [IRR_REG(V_TPR)]
    test eax, VBIT(V_TPR)
    jz 1f
    OKAY "tpr masking: pending in irr, not delivered"
    jmp 2f
1:  BAD "tpr masking: pending in irr, not delivered"
2:  mov dword ptr [APIC_TPR], 0
    mov ebx, offset COUNT(V_TPR)
    mov ecx, 1
    call wait_count
    test eax, eax
    jz 1f
    mov eax, [IRR_REG(V_TPR)]
    test eax, VBIT(V_TPR)
    jnz 1f
    OKAY "tpr masking: tpr 0 delivers it"
    jmp 2f
1:  mov eax, COUNT(V_TPR)
    BAD "tpr masking: tpr 0 delivers it (eax = interrupts)"
2:

    /* Nested ISR. */
    mov dword ptr [pc_hooks + V_LOW * 4], offset hook_low
    mov dword ptr [pc_hooks + V_HIGH * 4], offset hook_high
    mov eax, V_LOW | SELF
    xor edx, edx
    call icr_send
    mov ebx, offset nested_done
    mov ecx, 1
    call wait_count
    test eax, eax
    jnz 1f
    mov eax, COUNT(V_LOW)
    BAD "nested: vector 0x60 handled (eax = interrupts)"
    jmp nested_end
1:  SAY "nested: isr[0x60] isr[0xa0] in 0x60: "
    mov eax, [isr_low_entry]
    call print_hex32
    PUTS " "
    mov eax, [isr_low_entry + 4]
    call print_hex32
    PUTS "; in 0xa0: "
    mov eax, [isr_high_entry]
    call print_hex32
    PUTS " "
    mov eax, [isr_high_entry + 4]
    call print_hex32
    PUTS "; after its eoi: "
    mov eax, [isr_high_eoi]
    call print_hex32
    PUTS " "
    mov eax, [isr_high_eoi + 4]
    call print_hex32
    PUTS "; after 0x60 eoi: "
    mov eax, [isr_low_eoi]
    call print_hex32
    PUTS " "
    mov eax, [isr_low_eoi + 4]
    call print_hex32
    call print_nl
    mov eax, [high_preempted]
    cmp eax, 1
    je 1f
    BAD "nested: 0xa0 preempts 0x60's handler"
    jmp 2f
1:  OKAY "nested: 0xa0 preempts 0x60's handler"
2:  mov eax, [isr_high_entry]
    test eax, VBIT(V_LOW)
    jz 1f
    mov eax, [isr_high_entry + 4]
    test eax, VBIT(V_HIGH)
    jz 1f
    OKAY "nested: both isr bits set in 0xa0's handler"
    jmp 2f
1:  BAD "nested: both isr bits set in 0xa0's handler"
2:  mov eax, [isr_high_eoi]
    test eax, VBIT(V_LOW)
    jz 1f
    mov eax, [isr_high_eoi + 4]
    test eax, VBIT(V_HIGH)
    jnz 1f
    OKAY "nested: eoi clears the highest isr bit (0xa0) first"
    jmp 2f
1:  BAD "nested: eoi clears the highest isr bit (0xa0) first"
2:  mov eax, [isr_low_eoi]
    or eax, [isr_low_eoi + 4]
    test eax, VBIT(V_LOW) | VBIT(V_HIGH)
    jnz 1f
    OKAY "nested: the second eoi clears 0x60"
    jmp nested_end
1:  BAD "nested: the second eoi clears 0x60"
nested_end:

    /* ESR. */
    mov dword ptr [pc_hooks + V_ILLEGAL * 4], offset hook_illegal
    mov dword ptr [APIC_LVTE], V_ERROR
    mov dword ptr [APIC_ESR], 0
    mov dword ptr [APIC_ESR], 0
    mov eax, V_ILLEGAL | SELF
    xor edx, edx
    call icr_send
    mov eax, 1 << 20
    call delay_irq
    mov dword ptr [APIC_ESR], 0
    mov eax, [APIC_ESR]
    SAY "esr after a self-ipi of vector 3: "
    call print_hex32
    PUTS " (delivered on vector 3: "
    mov eax, COUNT(V_ILLEGAL)
    call print_dec32
    PUTS ", error interrupts: "
    mov eax, COUNT(V_ERROR)
    call print_dec32
    PUTS ")\n"
    mov dword ptr [APIC_ESR], 0
    mov eax, V_ABSENT         /* fixed, physical */
    mov edx, 0x0f << 24
    call icr_send
    mov eax, 1 << 20
    call delay_irq
    mov dword ptr [APIC_ESR], 0
    mov eax, [APIC_ESR]
    SAY "esr after an ipi to apic id 0x0f: "
    call print_hex32
    PUTS " (error interrupts: "
    mov eax, COUNT(V_ERROR)
    call print_dec32
    PUTS ")\n"
    mov eax, COUNT(V_ABSENT)
    test eax, eax
    jnz 1f
    OKAY "esr: the ipi to apic id 0x0f did not arrive here"
    jmp 2f
1:  BAD "esr: the ipi to apic id 0x0f did not arrive here (eax = interrupts)"
2:  mov dword ptr [APIC_LVTE], V_ERROR | MASKED
    mov dword ptr [APIC_ESR], 0

    call deadline_checks
    call x2apic_checks
    jmp pc_finish

/* x2APIC, if CPUID has it. */
x2apic_checks:
    mov eax, 1
    cpuid
    test ecx, 1 << 21
    jnz 1f
    SAY "x2apic: skip (cpuid.1:ecx bit 21 clear)\n"
    ret
1:  mov ecx, MSR_APIC_BASE
    rdmsr
    or eax, 0xc00             /* EN, EXTD */
    mov dword ptr [pc_fault_vec], -1
    mov dword ptr [pc_recover], offset 2f
    wrmsr
    mov dword ptr [pc_recover], 0
2:  cmp dword ptr [pc_fault_vec], -1
    je 3f
    mov eax, [pc_fault_vec]
    BAD "x2apic: apic_base bit 10 switches (eax = fault vector)"
    ret
3:  mov byte ptr [x2apic_on], 1
    rdmsr
    SAY "x2apic: apic_base "
    call print_hex32
    call print_nl
    mov ecx, 0x802
    rdmsr
    mov ebx, eax
    mov ecx, 0x803
    rdmsr
    mov [x2_ver], eax
    SAY "x2apic: id msr "
    xchg eax, ebx
    call print_hex32
    PUTS " version msr "
    xchg eax, ebx
    call print_hex32
    call print_nl
    cmp eax, [xapic_ver]
    je 1f
    BAD "x2apic: msr 0x803 version matches the xapic version"
    jmp 2f
1:  OKAY "x2apic: msr 0x803 version matches the xapic version"
2:
    mov eax, [xapic_id]
    shr eax, 24
    cmp eax, ebx
    je 1f
    mov eax, ebx
    BAD "x2apic: msr 0x802 id matches the xapic id"
    jmp 2f
1:  OKAY "x2apic: msr 0x802 id matches the xapic id"
2:  /* Self-IPI through MSR 0x83F. */
    mov ecx, 0x83f
    mov eax, V_X2SELF
    xor edx, edx
    wrmsr
    mov ebx, offset COUNT(V_X2SELF)
    mov ecx, 1
    call wait_count
    test eax, eax
    jnz 1f
    BAD "x2apic: self-ipi through msr 0x83f arrives"
    jmp 2f
1:  OKAY "x2apic: self-ipi through msr 0x83f arrives"
2:  /* MSR 0x831: no register there. */
    mov dword ptr [pc_fault_vec], -1
    mov dword ptr [pc_recover], offset 3f
    mov ecx, 0x831
    rdmsr
    mov dword ptr [pc_recover], 0
3:  mov eax, [pc_fault_vec]
    cmp eax, 13
    jne 1f
    OKAY "x2apic: rdmsr 0x831 raises #gp"
    jmp 2f
1:  BAD "x2apic: rdmsr 0x831 raises #gp (eax = fault vector)"
2:  /* x2APIC -> xAPIC directly. */
    mov ecx, MSR_APIC_BASE
    rdmsr
    and eax, ~0x400
    or eax, 0x800
    mov dword ptr [pc_fault_vec], -1
    mov dword ptr [pc_recover], offset 3f
    wrmsr
    mov dword ptr [pc_recover], 0
3:  mov ebx, [pc_fault_vec]
    rdmsr
    cmp ebx, 13
    jne 1f
    test eax, 0x400
    jz 1f
    OKAY "x2apic: x2apic -> xapic directly raises #gp"
    jmp 2f
1:  BAD "x2apic: x2apic -> xapic directly raises #gp (eax = apic_base)"
2:  /* Back to xAPIC mode: disable, then enable. */
    mov ecx, MSR_APIC_BASE
    rdmsr
    and eax, ~0xc00
    mov dword ptr [pc_fault_vec], -1
    mov dword ptr [pc_recover], offset 4f
    wrmsr
    mov byte ptr [x2apic_on], 0
    or eax, 0x800
    wrmsr
4:  mov dword ptr [pc_recover], 0
    mov byte ptr [x2apic_on], 0
    rdmsr
    SAY "x2apic: disabled, then enabled: apic_base "
    call print_hex32
    cmp dword ptr [pc_fault_vec], -1
    je 5f
    PUTS ", a fault on vector "
    push eax
    mov eax, [pc_fault_vec]
    call print_dec32
    pop eax
5:  call print_nl
    and eax, 0xfffffc00
    cmp eax, LAPIC | 0x800
    jne 1f
    call lapic_setup
    mov eax, [APIC_ID]
    cmp eax, [xapic_id]
    jne 1f
    OKAY "x2apic: disabled and re-enabled in xapic mode"
    ret
1:  BAD "x2apic: disabled and re-enabled in xapic mode"
    ret

/* TSC deadline, if CPUID has it. */
deadline_checks:
    mov eax, 1
    cpuid
    test ecx, 1 << 24
    jnz 1f
    SAY "tsc deadline: skip (cpuid.1:ecx bit 24 clear)\n"
    ret
1:  mov dword ptr [APIC_LVTT], V_DEADLINE | TSCDEADLINE
    mov ecx, MSR_TSC_DEADLINE
    rdtsc
    add eax, 100000
    adc edx, 0
    wrmsr
    mov ebx, offset COUNT(V_DEADLINE)
    mov ecx, 1
    call wait_count
    test eax, eax
    jnz 1f
    mov ecx, MSR_TSC_DEADLINE
    rdmsr
    BAD "tsc deadline: fires (eax = msr 0x6e0 low)"
    jmp 2f
1:  mov eax, 1 << 22
    call delay_irq
    mov ecx, MSR_TSC_DEADLINE
    rdmsr
    mov ebx, COUNT(V_DEADLINE)
    SAY "tsc deadline: "
    push eax
    mov eax, ebx
    call print_dec32
    PUTS " interrupts, msr 0x6e0 then "
    pop eax
    call print_hex64
    call print_nl
    or eax, edx
    jnz 3f
    cmp ebx, 1
    jne 3f
    OKAY "tsc deadline: fires once, msr 0x6e0 reads 0 after"
    jmp 2f
3:  mov eax, ebx
    BAD "tsc deadline: fires once, msr 0x6e0 reads 0 after"
2:  mov dword ptr [APIC_LVTT], MASKED
    ret

/* ICR := EDX (high), EAX (low); then waits (bounded) for the delivery
 * status bit to clear. Keeps registers. */
icr_send:
    push ecx
    mov [APIC_ICRHI], edx
    mov [APIC_ICRLO], eax
    mov ecx, 0x100000
1:  test dword ptr [APIC_ICRLO], 1 << 12
    jz 2f
    sub ecx, 1
    jnz 1b
2:  pop ecx
    ret

/* Vector 0x60: interrupts on, a self-IPI of 0xA0, wait for it; then its
 * own EOI. Records the ISR words of 0x60 and 0xA0 around each EOI. */
hook_low:
    mov eax, [ISR_REG(V_LOW)]
    mov [isr_low_entry], eax
    mov eax, [ISR_REG(V_HIGH)]
    mov [isr_low_entry + 4], eax
    mov dword ptr [in_low], 1
    mov eax, V_HIGH | SELF
    xor edx, edx
    call icr_send
    mov ebx, offset COUNT(V_HIGH)
    mov ecx, 1
    call wait_count           /* STI ... CLI */
    mov dword ptr [in_low], 0
    call lapic_eoi
    mov eax, [ISR_REG(V_LOW)]
    mov [isr_low_eoi], eax
    mov eax, [ISR_REG(V_HIGH)]
    mov [isr_low_eoi + 4], eax
    mov dword ptr [nested_done], 1
    ret

hook_high:
    mov eax, [in_low]
    mov [high_preempted], eax
    mov eax, [ISR_REG(V_LOW)]
    mov [isr_high_entry], eax
    mov eax, [ISR_REG(V_HIGH)]
    mov [isr_high_entry + 4], eax
    call lapic_eoi
    mov eax, [ISR_REG(V_LOW)]
    mov [isr_high_eoi], eax
    mov eax, [ISR_REG(V_HIGH)]
    mov [isr_high_eoi + 4], eax
    ret

/* Vector 3 as an interrupt (should an APIC deliver the illegal vector). */
hook_illegal:
    jmp lapic_eoi

    .section .rodata
prefix: .asciz "apic: "

    .section .data
    .balign 4
xapic_id:       .long 0
xapic_ver:      .long 0
in_low:         .long 0
high_preempted: .long 0
nested_done:    .long 0
isr_low_entry:  .long 0, 0
isr_high_entry: .long 0, 0
isr_high_eoi:   .long 0, 0
isr_low_eoi:    .long 0, 0
x2_ver:         .long 0
