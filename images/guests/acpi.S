/* acpi: the ACPI tables as an OS finds them on a PC: a multiboot v1
 * kernel (see pcboard.inc), flat protected mode, paging off (the tables
 * must lie below 4 GiB).
 *
 * Checks, each printed on COM1:
 *  - the RSDP: "RSD PTR " on a 16-byte boundary in 0xE0000-0xFFFFF; its
 *    address, OEM ID and revision are printed; the checksum of its first
 *    20 bytes is zero, and with revision 2 or more that of all `length`
 *    bytes (the extended checksum);
 *  - the root table: the XSDT when the revision is 2 or more and its
 *    address is not zero, else the RSDT: its signature, length and
 *    checksum; then every table it lists: its address, signature and
 *    length are printed, its checksum is zero; the DSDT that the FACP
 *    names is checked the same way;
 *  - the MADT ("APIC") is there: the local APIC address, the number of
 *    processor local APIC entries (at least 1), each I/O APIC (ID,
 *    address, GSI base; at least one) and each interrupt source override
 *    (bus, source, GSI, flags) are printed;
 *  - the FACP is there: PM_TMR_BLK, SCI_INT, PM1a_CNT_BLK and DSDT are
 *    printed; PM_TMR_BLK is not zero;
 *  - the PM timer (3.579545 MHz, 24 bits) read twice with about 10 ms
 *    between: it advanced.
 * Status 0 on port 0xF4 when all pass, else the number of failures. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "pcboard.inc"

#define SCAN_START 0xE0000
#define SCAN_END   0x100000
#define MAX_TABLE_LEN 0x100000   /* a length past this is not believed */

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call pc_init
    SAY "multiboot v1 kernel, flat protected mode\n"

    /* The RSDP. */
    mov esi, SCAN_START
1:  cmp dword ptr [esi], 0x20445352       /* "RSD " */
    jne 2f
    cmp dword ptr [esi + 4], 0x20525450   /* "PTR " */
    jne 2f
    push esi
    mov ecx, 20
    call checksum
    pop esi
    test al, al
    jz 3f
2:  add esi, 16
    cmp esi, SCAN_END
    jb 1b
    xor eax, eax
    BAD "rsdp found in 0xe0000-0xfffff with a valid checksum"
    jmp pc_finish
3:  mov [rsdp], esi
    SAY "rsdp at "
    mov eax, esi
    call print_hex32
    PUTS " oem \""
    mov ebx, esi
    add ebx, 9
    mov ecx, 6
    call print_n
    PUTS "\" revision "
    movzx eax, byte ptr [esi + 15]
    call print_dec32
    PUTS " rsdt "
    mov eax, [esi + 16]
    call print_hex32
    call print_nl
    OKAY "rsdp checksum"
    cmp byte ptr [esi + 15], 2
    jb 4f
    SAY "rsdp length "
    mov eax, [esi + 20]
    call print_dec32
    PUTS " xsdt "
    mov eax, [esi + 24]
    mov edx, [esi + 28]
    call print_hex64
    call print_nl
    mov ecx, [esi + 20]
    cmp ecx, 36
    jb 5f
    cmp ecx, 4096
    ja 5f
    push esi
    call checksum
    pop esi
    test al, al
    jnz 5f
    OKAY "rsdp extended checksum"
    jmp 4f
5:  mov eax, [esi + 20]
    BAD "rsdp extended checksum (eax = length)"
4:

    /* The root table: the XSDT (64-bit entries) or the RSDT (32-bit). */
    mov dword ptr [entry_size], 4
    mov ebx, [esi + 16]
    cmp byte ptr [esi + 15], 2
    jb 6f
    cmp dword ptr [esi + 28], 0
    jne 6f                    /* an XSDT above 4 GiB: use the RSDT */
    mov eax, [esi + 24]
    test eax, eax
    jz 6f
    mov ebx, eax
    mov dword ptr [entry_size], 8
6:  mov [root], ebx
    call show_table
    jc fail_root
    mov eax, [ebx]
    cmp dword ptr [entry_size], 8
    je 7f
    cmp eax, 0x54445352       /* "RSDT" */
    je 8f
    BAD "root table signature RSDT"
    jmp 8f
7:  cmp eax, 0x54445358       /* "XSDT" */
    je 8f
    BAD "root table signature XSDT"
8:
    /* Every table it lists. */
    mov ecx, [ebx + 4]
    sub ecx, 36
    jb fail_root
    mov eax, ecx
    xor edx, edx
    div dword ptr [entry_size]
    mov ebp, eax              /* entries */
    lea edi, [ebx + 36]
    SAY "root table lists "
    call print_dec32
    PUTS " tables\n"
    test ebp, ebp
    jz 9f
10: mov ebx, [edi]
    cmp dword ptr [entry_size], 8
    jne 11f
    cmp dword ptr [edi + 4], 0
    je 11f
    mov eax, [edi + 4]
    BAD "table below 4 GiB (eax = high half)"
    jmp 12f
11: call show_table
    jc 12f
    mov eax, [ebx]
    cmp eax, 0x43495041       /* "APIC" */
    jne 13f
    mov [madt], ebx
13: cmp eax, 0x50434146       /* "FACP" */
    jne 12f
    mov [facp], ebx
12: add edi, [entry_size]
    sub ebp, 1
    jnz 10b
9:

    /* The FACP, and the DSDT it names. */
    mov ebx, [facp]
    test ebx, ebx
    jnz 1f
    xor eax, eax
    BAD "facp found"
    jmp madt_part
1:  OKAY "facp found"
    SAY "facp pm_tmr_blk "
    mov eax, [ebx + 76]
    mov [pm_tmr], eax
    call print_hex32
    PUTS " sci_int "
    movzx eax, word ptr [ebx + 46]
    call print_dec32
    PUTS " pm1a_cnt_blk "
    mov eax, [ebx + 64]
    call print_hex32
    PUTS " dsdt "
    mov eax, [ebx + 40]
    call print_hex32
    call print_nl
    mov ebx, [ebx + 40]
    test ebx, ebx
    jz 2f
    call show_table
    jc madt_part
    cmp dword ptr [ebx], 0x54445344   /* "DSDT" */
    je madt_part
    mov eax, [ebx]
    BAD "dsdt signature"
    jmp madt_part
2:  BAD "facp names a dsdt"

madt_part:
    mov ebx, [madt]
    test ebx, ebx
    jnz 1f
    xor eax, eax
    BAD "madt found"
    jmp pmtimer_part
1:  OKAY "madt found"
    SAY "madt local apic address "
    mov eax, [ebx + 36]
    call print_hex32
    PUTS " flags "
    mov eax, [ebx + 40]
    call print_hex32
    call print_nl
    mov esi, ebx
    add esi, 44               /* first entry */
    mov edi, ebx
    add edi, [ebx + 4]        /* end */
    xor ebp, ebp              /* local APIC entries */
    mov dword ptr [ioapics], 0
2:  lea eax, [esi + 2]
    cmp eax, edi
    ja 3f
    movzx ecx, byte ptr [esi + 1]
    cmp ecx, 2
    jb 3f                     /* a zero length would loop for ever */
    lea eax, [esi + ecx]
    cmp eax, edi
    ja 3f
    movzx eax, byte ptr [esi]
    cmp eax, 0
    jne 4f
    add ebp, 1
    SAY "  madt local apic processor "
    movzx eax, byte ptr [esi + 2]
    call print_dec32
    PUTS " apic id "
    movzx eax, byte ptr [esi + 3]
    call print_dec32
    PUTS " flags "
    mov eax, [esi + 4]
    call print_hex32
    call print_nl
    jmp 5f
4:  cmp eax, 1
    jne 6f
    add dword ptr [ioapics], 1
    SAY "  madt io apic id "
    movzx eax, byte ptr [esi + 2]
    call print_dec32
    PUTS " address "
    mov eax, [esi + 4]
    call print_hex32
    PUTS " gsi base "
    mov eax, [esi + 8]
    call print_dec32
    call print_nl
    jmp 5f
6:  cmp eax, 2
    jne 7f
    SAY "  madt override bus "
    movzx eax, byte ptr [esi + 2]
    call print_dec32
    PUTS " irq "
    movzx eax, byte ptr [esi + 3]
    call print_dec32
    PUTS " gsi "
    mov eax, [esi + 4]
    call print_dec32
    PUTS " flags "
    movzx eax, word ptr [esi + 8]
    call print_hex32
    call print_nl
    jmp 5f
7:  SAY "  madt entry type "
    call print_dec32
    PUTS " length "
    mov eax, ecx
    call print_dec32
    call print_nl
5:  add esi, ecx
    jmp 2b
3:  SAY "madt: "
    mov eax, ebp
    call print_dec32
    PUTS " local apic entries, "
    mov eax, [ioapics]
    call print_dec32
    PUTS " io apic entries\n"
    mov eax, ebp
    test eax, eax
    jnz 8f
    BAD "madt local apic entries"
    jmp 9f
8:  OKAY "madt local apic entries"
9:  mov eax, [ioapics]
    test eax, eax
    jnz 8f
    BAD "madt io apic entries"
    jmp pmtimer_part
8:  OKAY "madt io apic entries"

pmtimer_part:
    mov edx, [pm_tmr]
    test edx, edx
    jnz 1f
    xor eax, eax
    BAD "pm timer port"
    jmp pc_finish
1:  in eax, dx
    and eax, 0xffffff
    mov ebx, eax
    mov eax, 1 << 25          /* about 10 ms */
    call delay_irq
    in eax, dx
    and eax, 0xffffff
    mov ecx, eax
    SAY "pm timer "
    mov eax, ebx
    call print_hex32
    PUTS " then "
    mov eax, ecx
    call print_hex32
    PUTS " ("
    sub eax, ebx
    and eax, 0xffffff
    call print_dec32
    PUTS " ticks)\n"
    test eax, eax
    jz 2f
    OKAY "pm timer advances"
    jmp pc_finish
2:  BAD "pm timer advances"
    jmp pc_finish

fail_root:
    mov eax, [root]
    BAD "root table"
    jmp pc_finish

/* The sum of ECX bytes at ESI, in AL. Clobbers ECX, ESI. */
checksum:
    xor eax, eax
    test ecx, ecx
    jz 2f
1:  add al, [esi]
    add esi, 1
    sub ecx, 1
    jnz 1b
2:  ret

/* Prints ECX bytes at EBX as characters. Keeps registers. */
print_n:
    push eax
    push ebx
    push ecx
    test ecx, ecx
    jz 2f
1:  mov al, [ebx]
    call uart_putc
    add ebx, 1
    sub ecx, 1
    jnz 1b
2:  pop ecx
    pop ebx
    pop eax
    ret

/* Prints the table at EBX ("  table <addr> <sig> length <n>") and checks
 * its checksum: one ok or FAIL line. CF set when the table cannot be
 * believed (length below 36 or past MAX_TABLE_LEN, or a bad checksum).
 * Keeps registers. */
show_table:
    push eax
    push ecx
    push esi
    SAY "table at "
    mov eax, ebx
    call print_hex32
    PUTS " "
    mov ecx, 4
    call print_n
    PUTS " length "
    mov eax, [ebx + 4]
    call print_dec32
    PUTS " revision "
    movzx eax, byte ptr [ebx + 8]
    call print_dec32
    PUTS " oem \""
    push ebx
    add ebx, 10
    mov ecx, 6
    call print_n
    pop ebx
    PUTS "\"\n"
    mov ecx, [ebx + 4]
    cmp ecx, 36
    jb 1f
    cmp ecx, MAX_TABLE_LEN
    ja 1f
    mov esi, ebx
    call checksum
    test al, al
    jnz 2f
    SAY "  checksum "
    mov ecx, 4
    call print_n
    PUTS " ok\n"
    clc
    jmp 3f
1:  mov eax, [ebx + 4]
    BAD "  table length"
    stc
    jmp 3f
2:  SAY "  checksum "
    mov ecx, 4
    call print_n
    movzx eax, al
    PUTS " FAIL got "
    call print_hex32
    call print_nl
    add dword ptr [pc_failures], 1
    stc
3:  pop esi
    pop ecx
    pop eax
    ret

    .section .rodata
prefix: .asciz "acpi: "

    .section .data
    .balign 4
rsdp:       .long 0
root:       .long 0
entry_size: .long 4
madt:       .long 0
facp:       .long 0
pm_tmr:     .long 0
ioapics:    .long 0
