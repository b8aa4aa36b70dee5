/* fwcfg: QEMU's firmware configuration device (fw_cfg) through its I/O
 * ports, as SeaBIOS and Linux read it: a multiboot v1 kernel (see
 * pcboard.inc), flat protected mode, paging off.
 *
 * Checks, each printed on COM1:
 *  - selector 0x0000 (signature): the four bytes read from port 0x511
 *    after a 16-bit write of the selector to port 0x510 are "QEMU";
 *  - selector 0x0001 (ID): printed; bit 0 (the traditional interface)
 *    must be set;
 *  - selector 0x0005 (number of CPUs, 16-bit little-endian): printed,
 *    must be 1 or more;
 *  - selector 0x0019 (file directory): a big-endian count, then 64-byte
 *    entries (be32 size, be16 selector, be16 reserved, 56-byte name);
 *    the count and every name are printed; `etc/e820` must be there;
 *  - etc/e820: selected and read, 20-byte entries (le64 base, le64
 *    length, le32 type), each printed; the total of type 1 (RAM) is
 *    printed beside the multiboot information's mem_upper + 1 MiB and
 *    must be within 1 MiB of it.
 * Status 0 on port 0xF4 when all pass, else the number of failures. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "pcboard.inc"

#define FW_CFG_SEL  0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_SIGNATURE 0x0000
#define FW_CFG_ID        0x0001
#define FW_CFG_NB_CPUS   0x0005
#define FW_CFG_FILE_DIR  0x0019
#define MAX_E820 32

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call pc_init
    SAY "multiboot v1 kernel, flat protected mode\n"

    /* Signature. */
    mov ax, FW_CFG_SIGNATURE
    call fw_select
    call fw_read32_le
    SAY "signature "
    call print_hex32
    PUTS " ("
    push eax
    mov ecx, 4
1:  call uart_putc
    shr eax, 8
    sub ecx, 1
    jnz 1b
    pop eax
    PUTS ")\n"
    cmp eax, 0x554d4551       /* "QEMU" */
    jne 2f
    OKAY "signature QEMU"
    jmp 3f
2:  BAD "signature QEMU"
3:

    /* ID. */
    mov ax, FW_CFG_ID
    call fw_select
    call fw_read32_le
    SAY "id "
    call print_hex32
    call print_nl
    test eax, 1
    jz 1f
    OKAY "id traditional interface"
    jmp 2f
1:  BAD "id traditional interface"
2:

    /* Number of CPUs. */
    mov ax, FW_CFG_NB_CPUS
    call fw_select
    call fw_read8
    movzx ebx, al
    call fw_read8
    movzx eax, al
    shl eax, 8
    or eax, ebx
    SAY "nb_cpus "
    call print_dec32
    call print_nl
    test eax, eax
    jz 1f
    OKAY "nb_cpus"
    jmp 2f
1:  BAD "nb_cpus"
2:

    /* File directory. */
    mov ax, FW_CFG_FILE_DIR
    call fw_select
    call fw_read32_le
    bswap eax
    mov [file_count], eax
    SAY "file directory: "
    call print_dec32
    PUTS " files\n"
    cmp eax, 4096
    jbe 1f
    BAD "file directory count"
    jmp e820_done
1:  mov ebp, eax
    test ebp, ebp
    jz 5f
4:  mov edi, offset entry
    mov ecx, 64
    call fw_read_buf
    mov byte ptr [entry + 63], 0
    SAY "  file "
    mov eax, [entry + 4]      /* be16 selector, be16 reserved */
    xchg al, ah
    movzx eax, ax
    call print_hex32
    PUTS " size "
    mov eax, [entry]
    bswap eax
    call print_dec32
    PUTS " "
    push esi
    mov esi, offset entry + 8
    call uart_puts
    pop esi
    call print_nl
    /* etc/e820? */
    push esi
    push edi
    push ecx
    mov esi, offset entry + 8
    mov edi, offset name_e820
    mov ecx, 9                /* with the NUL */
    cld
    repe cmpsb
    pop ecx
    pop edi
    pop esi
    jne 6f
    mov eax, [entry]
    bswap eax
    mov [e820_size], eax
    mov eax, [entry + 4]
    xchg al, ah
    movzx eax, ax
    mov [e820_sel], eax
6:  sub ebp, 1
    jnz 4b
5:  mov eax, [e820_sel]
    test eax, eax
    jnz 1f
    BAD "etc/e820 in the file directory"
    jmp e820_done
1:  OKAY "etc/e820 in the file directory"

    /* etc/e820. */
    mov eax, [e820_size]
    xor edx, edx
    mov ecx, 20
    div ecx
    test edx, edx
    jz 1f
    mov eax, [e820_size]
    BAD "etc/e820 size a multiple of 20"
    jmp e820_done
1:  cmp eax, MAX_E820
    jbe 1f
    mov eax, MAX_E820
1:  mov ebp, eax              /* entries */
    mov eax, [e820_sel]
    call fw_select
    mov edi, offset e820_buf
    imul ecx, ebp, 20
    call fw_read_buf
    mov dword ptr [ram_lo], 0
    mov dword ptr [ram_hi], 0
    mov ebx, offset e820_buf
    test ebp, ebp
    jz 3f
2:  SAY "  e820 base "
    mov eax, [ebx]
    mov edx, [ebx + 4]
    call print_hex64
    PUTS " length "
    mov eax, [ebx + 8]
    mov edx, [ebx + 12]
    call print_hex64
    PUTS " type "
    mov eax, [ebx + 16]
    call print_dec32
    call print_nl
    cmp dword ptr [ebx + 16], 1
    jne 4f
    mov eax, [ebx + 8]
    mov edx, [ebx + 12]
    add [ram_lo], eax
    adc [ram_hi], edx
4:  add ebx, 20
    sub ebp, 1
    jnz 2b
3:  SAY "e820 ram total "
    mov eax, [ram_lo]
    mov edx, [ram_hi]
    call print_hex64
    PUTS " bytes ("
    shrd eax, edx, 10
    call print_dec32
    PUTS " KiB)\n"
    mov ebx, eax              /* KiB */

    /* Against the multiboot information. */
    cmp dword ptr [boot_magic], MB_BOOT_MAGIC
    jne 7f
    mov esi, [boot_info]
    test dword ptr [esi], 1
    jz 7f
    SAY "multiboot mem_lower "
    mov eax, [esi + 4]
    call print_dec32
    PUTS " KiB, mem_upper "
    mov eax, [esi + 8]
    call print_dec32
    PUTS " KiB; mem_upper + 1024 = "
    add eax, 1024
    call print_dec32
    PUTS " KiB\n"
    sub eax, ebx
    jns 8f
    neg eax
8:  cmp eax, 1024
    ja 9f
    OKAY "e820 ram total matches multiboot mem_upper + 1 MiB"
    jmp e820_done
9:  mov eax, ebx
    BAD "e820 ram total matches multiboot mem_upper + 1 MiB"
    jmp e820_done
7:  mov eax, [boot_magic]
    BAD "multiboot memory information"

e820_done:
    jmp pc_finish

/* Selects item AX. Keeps registers. */
fw_select:
    push edx
    mov dx, FW_CFG_SEL
    out dx, ax
    pop edx
    ret

/* Reads one byte into AL. */
fw_read8:
    push edx
    mov dx, FW_CFG_DATA
    in al, dx
    pop edx
    ret

/* Reads four bytes, first in the low byte of EAX. */
fw_read32_le:
    push ecx
    push edx
    mov dx, FW_CFG_DATA
    mov ecx, 4
1:  in al, dx
    ror eax, 8
    sub ecx, 1
    jnz 1b
    pop edx
    pop ecx
    ret

/* Reads ECX bytes to EDI (one IN each). Keeps registers. */
fw_read_buf:
    push eax
    push ecx
    push edx
    push edi
    mov dx, FW_CFG_DATA
    test ecx, ecx
    jz 2f
1:  in al, dx
    mov [edi], al
    add edi, 1
    sub ecx, 1
    jnz 1b
2:  pop edi
    pop edx
    pop ecx
    pop eax
    ret

    .section .rodata
prefix:    .asciz "fwcfg: "
name_e820: .asciz "etc/e820"

    .section .data
    .balign 4
file_count: .long 0
e820_sel:   .long 0
e820_size:  .long 0
ram_lo:     .long 0
ram_hi:     .long 0

    .section .bss
    .balign 4
entry:    .skip 64
e820_buf: .skip MAX_E820 * 20
