/* multiboot: a multiboot (v1) kernel, as QEMU's -kernel and GRUB load it:
 * an ELF with the multiboot header in its first 8 KiB, entered in flat
 * protected mode with EAX = 0x2BADB002 and EBX = the multiboot
 * information (Multiboot Specification 0.6.96, section 3.3).
 *
 * It prints what the information says, each on COM1: the magic, the
 * flags, the memory sizes (flag 0), the command line (flag 2), the boot
 * loader's name (flag 9) and the memory map (flag 6) with the total of
 * the available ranges. Ends with status 0 on port 0xF4 when the magic is
 * right and the memory sizes and map are there, or 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define MB_HEADER_MAGIC 0x1BADB002
#define MB_HEADER_FLAGS 0x00000003   /* page-aligned modules, memory info */
#define MB_BOOT_MAGIC   0x2BADB002

    .section .text.start, "ax"
    .balign 4
multiboot_header:
    .long MB_HEADER_MAGIC
    .long MB_HEADER_FLAGS
    .long -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)

    .globl _start
_start:
    cli
    mov esp, offset stack_top
    mov [boot_magic], eax
    mov [boot_info], ebx
    call uart_init
    mov esi, offset msg_start
    call say

    mov esi, offset msg_magic
    call say
    mov eax, [boot_magic]
    call print_hex32
    call print_nl
    cmp eax, MB_BOOT_MAGIC
    jne fail

    mov esi, offset msg_info
    call say
    mov eax, [boot_info]
    call print_hex32
    mov esi, offset msg_flags
    call uart_puts
    mov ebx, [boot_info]
    mov eax, [ebx]
    call print_hex32
    call print_nl

    /* Flag 0: mem_lower and mem_upper, in KiB. */
    test dword ptr [ebx], 1 << 0
    jz fail
    mov esi, offset msg_mem
    call say
    mov eax, [ebx + 4]
    call print_dec32
    mov esi, offset msg_mem_upper
    call uart_puts
    mov eax, [ebx + 8]
    call print_dec32
    mov esi, offset msg_kib
    call uart_puts

    /* Flag 2: the command line. */
    test dword ptr [ebx], 1 << 2
    jz 1f
    mov esi, offset msg_cmdline
    call say
    mov esi, [ebx + 16]
    call uart_puts
    mov esi, offset msg_quote_nl
    call uart_puts
1:
    /* Flag 9: the boot loader's name. */
    test dword ptr [ebx], 1 << 9
    jz 2f
    mov esi, offset msg_loader
    call say
    mov esi, [ebx + 64]
    call uart_puts
    call print_nl
2:
    /* Flag 6: the memory map. Each entry: size (not counting itself),
     * base (64 bits), length (64 bits), type. */
    test dword ptr [ebx], 1 << 6
    jz fail
    mov esi, offset msg_mmap
    call say
    mov eax, [ebx + 44]
    call print_dec32
    mov esi, offset msg_bytes
    call uart_puts
    mov edi, [ebx + 48]           /* the current entry */
    mov ecx, edi
    add ecx, [ebx + 44]           /* the end */
    mov dword ptr [available], 0
3:  cmp edi, ecx
    jae 5f
    mov esi, offset msg_base
    call say
    mov eax, [edi + 4]
    mov edx, [edi + 8]
    call print_hex64
    mov esi, offset msg_length
    call uart_puts
    mov eax, [edi + 12]
    mov edx, [edi + 16]
    call print_hex64
    mov esi, offset msg_type
    call uart_puts
    mov eax, [edi + 20]
    call print_dec32
    call print_nl
    cmp dword ptr [edi + 20], 1
    jne 4f
    mov eax, [edi + 12]
    shr eax, 10
    add [available], eax
4:  mov eax, [edi]
    lea edi, [edi + eax + 4]
    jmp 3b
5:
    mov esi, offset msg_available
    call say
    mov eax, [available]
    call print_dec32
    mov esi, offset msg_kib
    call uart_puts
    cmp dword ptr [available], 0
    je fail

#include "pass-fail.inc"

#include "say.inc"

    .section .rodata
prefix:        .asciz "multiboot: "
msg_start:     .asciz "entered by a multiboot loader in flat protected mode\n"
msg_magic:     .asciz "eax = "
msg_info:      .asciz "information at "
msg_flags:     .asciz ", flags "
msg_mem:       .asciz "mem_lower = "
msg_mem_upper: .asciz " KiB, mem_upper = "
msg_kib:       .asciz " KiB\n"
msg_cmdline:   .asciz "command line: '"
msg_quote_nl:  .asciz "'\n"
msg_loader:    .asciz "boot loader: "
msg_mmap:      .asciz "memory map, "
msg_bytes:     .asciz " bytes:\n"
msg_base:      .asciz "  base "
msg_length:    .asciz " length "
msg_type:      .asciz " type "
msg_available: .asciz "available: "
msg_pass:      .asciz "all checks passed\n"
msg_fail:      .asciz "FAILED\n"

    .section .data
boot_magic: .long 0
boot_info:  .long 0
available:  .long 0

    .section .bss
    .balign 16
    .skip 4096
stack_top:
