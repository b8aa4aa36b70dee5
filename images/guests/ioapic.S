/* ioapic: the I/O APIC at 0xFEC00000 as a PC kernel drives it: a
 * multiboot v1 kernel (see pcboard.inc), flat protected mode, paging off,
 * both 8259s masked, the local APIC enabled (SVR 0x1FF, every LVT entry
 * masked).
 *
 * Checks, each printed on COM1:
 *  - the ID (index 0) and version (index 1) registers are printed; the
 *    version's bits 23:16 are 0x17 (24 redirection entries); every entry
 *    is then masked;
 *  - edge: the PIT's channel 0 at 1 kHz (ISA IRQ 0, which a PC wires to
 *    GSI 2) through entry 2, edge, active high, fixed, physical
 *    destination this local APIC, vector 0x30: 10 interrupts arrive; the
 *    entry is printed;
 *  - masked: with entry 2's mask bit set nothing arrives in about 13 ms
 *    (2^25 TSC cycles); unmasked again, interrupts resume;
 *  - level: the RTC's periodic interrupt (ISA IRQ 8 -> GSI 8; the RTC
 *    holds its line up until register C is read) through entry 8, level,
 *    active high, vector 0x38. The handler reads the entry (remote IRR,
 *    bit 14, is set) and the local APIC's TMR (the vector's bit is set),
 *    reads register C (the line drops), turns the periodic interrupt off
 *    and returns without EOI; remote IRR stays set until the local APIC
 *    EOI, which clears it; the vector arrived once;
 *  - out of range: indexes 0x40 (past entry 23) and 0x80 are read and
 *    printed; the version register still reads as before.
 * Status 0 on port 0xF4 when all pass, else the number of failures. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "pcboard.inc"

#define IOAPIC     0xFEC00000
#define IOREGSEL   (IOAPIC + 0x00)
#define IOWIN      (IOAPIC + 0x10)
#define VEC_PIT    0x30
#define VEC_RTC    0x38
#define PIT_GSI    2
#define RTC_GSI    8
#define REDIR_LO(n) (0x10 + 2 * (n))
#define REMOTE_IRR (1 << 14)
#define MASKED     (1 << 16)
#define LEVEL      (1 << 15)
#define CMOS_INDEX 0x70
#define CMOS_DATA  0x71

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call pc_init
    SAY "multiboot v1 kernel, flat protected mode; 8259s masked\n"
    call lapic_setup
    mov eax, [LAPIC + 0x20]
    shr eax, 24
    mov [apic_id], eax
    SAY "local apic enabled, id "
    call print_dec32
    call print_nl

    /* ID and version. */
    xor eax, eax
    call ioapic_read
    SAY "id register "
    call print_hex32
    mov eax, 1
    call ioapic_read
    mov [version], eax
    PUTS " version register "
    call print_hex32
    call print_nl
    shr eax, 16
    and eax, 0xff
    cmp eax, 0x17
    jne 1f
    OKAY "version: 24 redirection entries"
    jmp 2f
1:  BAD "version: 24 redirection entries"
2:  /* Mask every entry. */
    xor ecx, ecx
3:  lea eax, [ecx * 2 + 0x10]
    mov edx, MASKED
    call ioapic_write
    add eax, 1
    xor edx, edx
    call ioapic_write
    add ecx, 1
    cmp ecx, 24
    jb 3b
    mov eax, REDIR_LO(5)
    call ioapic_read
    and eax, ~(REMOTE_IRR | (1 << 12))   /* the read-only bits */
    cmp eax, MASKED
    jne 4f
    OKAY "all entries masked"
    jmp 5f
4:  BAD "all entries masked (entry 5)"
5:

    /* Edge: the PIT through entry 2. */
    mov al, 0x34              /* channel 0, LSB then MSB, mode 2 */
    out 0x43, al
    mov al, 1193 & 0xff
    out 0x40, al
    mov al, 1193 >> 8
    out 0x40, al
    mov eax, REDIR_LO(PIT_GSI) + 1
    mov edx, [apic_id]
    shl edx, 24
    call ioapic_write
    mov eax, REDIR_LO(PIT_GSI)
    mov edx, VEC_PIT          /* fixed, physical, active high, edge */
    call ioapic_write
    call show_entry
    mov ebx, offset pc_counts + VEC_PIT * 4
    mov ecx, 10
    call wait_count
    test eax, eax
    mov eax, [ebx]
    jz 1f
    SAY "pit: "
    call print_dec32
    PUTS " interrupts on vector 0x30 through gsi 2\n"
    OKAY "edge: pit through gsi 2"
    jmp 2f
1:  BAD "edge: pit through gsi 2 (eax = interrupts)"
    call show_entry
2:

    /* Masked. */
    mov eax, REDIR_LO(PIT_GSI)
    mov edx, VEC_PIT | MASKED
    call ioapic_write
    mov eax, 1 << 20
    call delay_irq            /* one already on its way may land */
    mov ebx, [pc_counts + VEC_PIT * 4]
    mov eax, 1 << 25
    call delay_irq
    mov eax, [pc_counts + VEC_PIT * 4]
    sub eax, ebx
    jnz 1f
    OKAY "masked: nothing in 2^25 tsc cycles"
    jmp 2f
1:  BAD "masked: nothing in 2^25 tsc cycles (eax = interrupts)"
2:  mov eax, REDIR_LO(PIT_GSI)
    mov edx, VEC_PIT
    call ioapic_write
    mov ecx, [pc_counts + VEC_PIT * 4]
    add ecx, 3
    mov ebx, offset pc_counts + VEC_PIT * 4
    call wait_count
    test eax, eax
    jz 1f
    OKAY "unmasked: interrupts resume"
    jmp 2f
1:  BAD "unmasked: interrupts resume"
2:  mov eax, REDIR_LO(PIT_GSI)
    mov edx, VEC_PIT | MASKED
    call ioapic_write
    mov al, 0x30              /* channel 0, mode 0: one count, then quiet */
    out 0x43, al
    mov al, 0xff
    out 0x40, al
    out 0x40, al

    /* Level: the RTC's periodic interrupt through entry 8. */
    mov dword ptr [pc_hooks + VEC_RTC * 4], offset rtc_hook
    mov al, 0x0b
    call cmos_read
    and al, ~0x70             /* PIE, AIE, UIE off */
    mov ah, al
    mov al, 0x0b
    call cmos_write
    mov al, 0x0a
    mov ah, 0x26              /* 32.768 kHz time base, rate 6: 1024 Hz */
    call cmos_write
    mov al, 0x0c
    call cmos_read            /* clear the flags (drops the line) */
    mov eax, REDIR_LO(RTC_GSI) + 1
    mov edx, [apic_id]
    shl edx, 24
    call ioapic_write
    mov eax, REDIR_LO(RTC_GSI)
    mov edx, VEC_RTC | LEVEL  /* fixed, physical, active high, level */
    call ioapic_write
    mov eax, REDIR_LO(RTC_GSI)
    call show_entry_eax
    mov al, 0x0b
    call cmos_read
    or al, 0x40               /* PIE */
    mov ah, al
    mov al, 0x0b
    call cmos_write
    mov ebx, offset rtc_done
    mov ecx, 1
    call wait_count
    test eax, eax
    jnz 1f
    mov eax, [pc_counts + VEC_RTC * 4]
    BAD "level: rtc interrupt through gsi 8 (eax = interrupts)"
    mov eax, REDIR_LO(RTC_GSI)
    call show_entry_eax
    jmp level_done
1:  OKAY "level: rtc interrupt through gsi 8"
    SAY "in the handler: entry "
    mov eax, [rtc_entry]
    call print_hex32
    PUTS " tmr "
    mov eax, [rtc_tmr]
    call print_hex32
    PUTS " isr "
    mov eax, [rtc_isr]
    call print_hex32
    PUTS " register c "
    mov eax, [rtc_regc]
    call print_hex32
    call print_nl
    mov eax, [rtc_entry]
    test eax, REMOTE_IRR
    jz 1f
    OKAY "level: remote irr set in the handler"
    jmp 2f
1:  BAD "level: remote irr set in the handler"
2:  mov eax, [rtc_tmr]
    test eax, 1 << (VEC_RTC % 32)
    jz 1f
    OKAY "level: local apic tmr bit set"
    jmp 2f
1:  BAD "level: local apic tmr bit set"
2:  mov eax, [rtc_regc]
    test eax, 0x40            /* PF */
    jnz 1f
    BAD "level: register c says periodic"
1:  mov eax, 1 << 20
    call delay_irq            /* the vector is in service: nothing comes */
    mov eax, REDIR_LO(RTC_GSI)
    call ioapic_read
    mov ebx, eax
    SAY "line dropped, before eoi: entry "
    call print_hex32
    call print_nl
    test ebx, REMOTE_IRR
    jz 1f
    OKAY "level: remote irr still set before eoi"
    jmp 2f
1:  BAD "level: remote irr still set before eoi"
2:  call lapic_eoi
    mov eax, REDIR_LO(RTC_GSI)
    call ioapic_read
    mov ebx, eax
    SAY "after the local apic eoi: entry "
    call print_hex32
    call print_nl
    test ebx, REMOTE_IRR
    jnz 1f
    OKAY "level: remote irr clear after eoi"
    jmp 2f
1:  BAD "level: remote irr clear after eoi"
2:  mov eax, 1 << 22
    call delay_irq
    mov eax, [pc_counts + VEC_RTC * 4]
    cmp eax, 1
    jne 1f
    OKAY "level: delivered once"
    jmp level_done
1:  BAD "level: delivered once (eax = interrupts)"
level_done:
    mov eax, REDIR_LO(RTC_GSI)
    mov edx, VEC_RTC | LEVEL | MASKED
    call ioapic_write

    /* Out of range. */
    mov eax, 0x40
    call ioapic_read
    SAY "index 0x40 reads "
    call print_hex32
    mov eax, 0x80
    call ioapic_read
    PUTS ", index 0x80 reads "
    call print_hex32
    call print_nl
    mov eax, 1
    call ioapic_read
    cmp eax, [version]
    jne 1f
    OKAY "out-of-range reads, version still reads the same"
    jmp 2f
1:  BAD "out-of-range reads, version still reads the same"
2:  jmp pc_finish

/* The RTC's vector: records the entry, TMR and ISR, reads register C,
 * turns the periodic interrupt off; no EOI. */
rtc_hook:
    mov eax, REDIR_LO(RTC_GSI)
    call ioapic_read
    mov [rtc_entry], eax
    mov eax, [LAPIC + 0x180 + (VEC_RTC / 32) * 0x10]
    mov [rtc_tmr], eax
    mov eax, [LAPIC + 0x100 + (VEC_RTC / 32) * 0x10]
    mov [rtc_isr], eax
    mov al, 0x0c
    call cmos_read
    movzx eax, al
    mov [rtc_regc], eax
    mov al, 0x0b
    call cmos_read
    and al, ~0x40
    mov ah, al
    mov al, 0x0b
    call cmos_write
    mov al, 0x0c
    call cmos_read
    mov dword ptr [rtc_done], 1
    ret

/* CMOS register AL -> AL. Keeps the others. */
cmos_read:
    out CMOS_INDEX, al
    in al, CMOS_DATA
    ret

/* CMOS register AL := AH. */
cmos_write:
    out CMOS_INDEX, al
    mov al, ah
    out CMOS_DATA, al
    ret

/* I/O APIC register EAX -> EAX. Keeps the others. */
ioapic_read:
    mov [IOREGSEL], eax
    mov eax, [IOWIN]
    ret

/* I/O APIC register EAX := EDX. Keeps registers. */
ioapic_write:
    mov [IOREGSEL], eax
    mov [IOWIN], edx
    ret

/* Prints entry 2 ("entry 0x12: high 0x... low 0x..."). Keeps registers. */
show_entry:
    push eax
    mov eax, REDIR_LO(PIT_GSI)
    call show_entry_eax
    pop eax
    ret

/* Prints the entry whose low register is index EAX. Keeps registers. */
show_entry_eax:
    push eax
    push ebx
    mov ebx, eax
    SAY "entry index "
    call print_hex32
    PUTS ": high "
    lea eax, [ebx + 1]
    call ioapic_read
    call print_hex32
    PUTS " low "
    mov eax, ebx
    call ioapic_read
    call print_hex32
    call print_nl
    pop ebx
    pop eax
    ret

    .section .rodata
prefix: .asciz "ioapic: "

    .section .data
    .balign 4
apic_id:   .long 0
version:   .long 0
rtc_done:  .long 0
rtc_entry: .long 0
rtc_tmr:   .long 0
rtc_isr:   .long 0
rtc_regc:  .long 0
