/* badpt64: garbage page tables in four-level paging. The guest installs
 * an IDT (#PF and #UD handlers, every other vector ends the VM with
 * status 200 + vector), a TSS for ring 3, and page tables at fixed
 * addresses full of traps, then touches them one case at a time
 * (badpt.inc runs the cases and prints one line each):
 *
 *   - reserved bits: bit 51 and bit MAXPHYADDR (from CPUID 0x80000008)
 *     in a PTE, bit 51 in a PDE, PDPTE and PML4E, PS in a PML4E, bit 13
 *     of a 2 MiB PDE, XD with EFER.NXE = 0 (read and fetch);
 *   - a non-present entry at each level;
 *   - a PML4E, a PDPTE and a PDE naming a table beyond RAM (3 GiB, 4 GiB)
 *     - read, user write and fetch: such an entry reads as not present
 *     (see images/guests/README.md);
 *   - loops: PML4[511] names the PML4 itself (the recursive map: the
 *     tables read as data, a PTE written through it), PD[6] names the PD;
 *   - protection: a supervisor write to a read-only page with CR0.WP = 1
 *     and = 0, user accesses to supervisor pages and read-only pages,
 *     fetches from NX pages (supervisor and user), from ring 3.
 *
 * The expected error codes and addresses come from the AMD APM vol. 2
 * (5.3, 5.6, 8.4.2) and the Intel SDM vol. 3 (4.5, 4.6, 4.7); values read
 * through the loops include the accessed and dirty bits that earlier
 * successful accesses set. (Whether a walk that faults sets A in the
 * entries above the fault is the implementation's choice: QEMU does,
 * Bochs does not; no case reads such an entry.)
 * Ends with the number of mismatches as its status (0: all as expected). */
    .intel_syntax noprefix
    .code32

#define GUEST_NAME "badpt64"
#define LONG64
#define CR2_DIGITS64
#define XAX rax
#define XBX rbx
#define XDI rdi
#define XSP rsp
#define PTRW qword
#define KDATA 0x10
#define G(x) [rip + x]
#define EFER 0xC0000080

/* The tables, at fixed guest-physical addresses (the image ends below). */
#define PML4 0x180000
#define PDPT 0x181000
#define PD   0x182000
#define PT_A 0x183000             /* the page table of 2-4 MiB */
#define PT_B 0x184000
#define FRAMES 0x300000           /* frame i at FRAMES + i * 4096 */
#define T    0x200000             /* linear: page i of PT_A at T + i * 4096 */
#define TAG(i) (0x5a0000c3+(i)*0x100) /* first dword of frame i: byte 0 is RET */
#define B51  (1<<51)
#define URW  7
#define SELFMAP_PT_A 0xffffff8000001000   /* PML4[511], PML4[0], PDPT[0], PD[1] */
#define G_BASE 0x1c0000           /* the garbage tables (see `garbage`) */
#define G_PAGES 16
#define FUZZ_N 4000

#include "com1.inc"
#include "print.inc"
    .code64
#include "badpt.inc"
    .code32

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call uart_init

    /* Clear the tables (the tags go in below). */
    mov edi, PML4
    mov ecx, 5 * 1024
    xor eax, eax
    cld
    rep stosd
    mov edi, FRAMES
    mov ecx, 16 * 1024
    rep stosd

    /* Frames: their tags. */
    xor ecx, ecx
1:  mov eax, ecx
    shl eax, 8
    add eax, 0x5a0000c3
    mov edi, ecx
    shl edi, 12
    mov [FRAMES + edi], eax
    add ecx, 1
    cmp ecx, 16
    jb 1b

    /* PML4 */
    mov dword ptr [PML4 + 0 * 8], PDPT | URW
    mov dword ptr [PML4 + 1 * 8], PDPT | URW | 0x80          /* PS: reserved */
    mov dword ptr [PML4 + 3 * 8], 0xc0000000 | URW           /* beyond RAM */
    mov dword ptr [PML4 + 4 * 8], PDPT | URW
    mov dword ptr [PML4 + 4 * 8 + 4], 1 << 19                /* bit 51 */
    mov dword ptr [PML4 + 511 * 8], PML4 | URW               /* itself */
    /* PDPT */
    mov dword ptr [PDPT + 0 * 8], PD | URW
    mov dword ptr [PDPT + 2 * 8], URW                        /* 4 GiB: beyond RAM */
    mov dword ptr [PDPT + 2 * 8 + 4], 1
    mov dword ptr [PDPT + 3 * 8], PD | URW
    mov dword ptr [PDPT + 3 * 8 + 4], 1 << 19
    /* PD */
    mov dword ptr [PD + 0 * 8], 0x87                         /* 0-2 MiB, user */
    mov dword ptr [PD + 1 * 8], PT_A | URW
    mov dword ptr [PD + 3 * 8], 0xc0000000 | URW             /* beyond RAM */
    mov dword ptr [PD + 4 * 8], PT_B | URW
    mov dword ptr [PD + 4 * 8 + 4], 1 << 19
    mov dword ptr [PD + 5 * 8], 0xa00000 | 0x83 | (1 << 13)  /* 2 MiB, bit 13 */
    mov dword ptr [PD + 6 * 8], PD | URW                     /* itself */
    /* PT_A */
    mov dword ptr [PT_A + 0 * 8], (FRAMES + 0x0000) | URW
    mov dword ptr [PT_A + 1 * 8], (FRAMES + 0x1000) | 1
    mov dword ptr [PT_A + 1 * 8 + 4], 1 << 19
    mov dword ptr [PT_A + 4 * 8], (FRAMES + 0x4000) | 5      /* read-only, user */
    mov dword ptr [PT_A + 5 * 8], (FRAMES + 0x5000) | 3      /* supervisor */
    mov dword ptr [PT_A + 6 * 8], (FRAMES + 0x6000) | URW
    mov dword ptr [PT_A + 6 * 8 + 4], 0x80000000             /* XD */
    mov dword ptr [PT_A + 7 * 8], (FRAMES + 0x7000) | URW
    mov dword ptr [PT_A + 8 * 8], (FRAMES + 0x8000) | 3      /* supervisor */
    /* PT_A[2]: a writable page with bit MAXPHYADDR set. */
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000008
    mov ecx, 40
    jb 2f
    mov eax, 0x80000008
    cpuid
    movzx ecx, al
2:  mov [maxphyaddr], ecx
    mov dword ptr [PT_A + 2 * 8], (FRAMES + 0x2000) | 3
    sub ecx, 32
    mov eax, 1
    shl eax, cl
    mov [PT_A + 2 * 8 + 4], eax

    /* The TSS descriptor's base, then long mode. */
    mov eax, offset tss
    mov [gdt_tss + 2], ax
    shr eax, 16
    mov [gdt_tss + 4], al
    mov dword ptr [tss + 4], offset fault_stack_top          /* RSP0 */

    mov eax, cr4
    or eax, 0x20                  /* PAE */
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, EFER
    rdmsr
    or eax, (1 << 8) | (1 << 11)  /* LME, NXE */
    wrmsr
    mov eax, cr0
    or eax, 0x80010000            /* PG, WP */
    mov cr0, eax
    lgdt [gdt_descriptor]
    ljmp 0x08, offset long64

    .code64
long64:
    mov ax, KDATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, offset stack_top
    mov ax, 0x28
    ltr ax

    /* The IDT: stub v for every vector v, #UD and #PF handled. */
    xor ecx, ecx
1:  mov eax, ecx
    shl eax, 3
    add eax, offset vec_stubs
    cmp ecx, 6
    jne 2f
    mov eax, offset ud_handler
2:  cmp ecx, 14
    jne 3f
    mov eax, offset pf_handler
3:  mov edi, ecx
    shl edi, 4
    add edi, offset idt
    mov [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8e00
    shr eax, 16
    mov [rdi + 6], ax
    mov dword ptr [rdi + 8], 0
    mov dword ptr [rdi + 12], 0
    add ecx, 1
    cmp ecx, 32
    jb 1b
    lidt [rip + idt_descriptor]

    mov esi, offset msg_start
    call say
    mov esi, offset msg_maxphy
    call say
    mov eax, [rip + maxphyaddr]
    call print_dec32
    call print_nl
    jmp bp_run

pf_handler:
    cmp dword ptr [rip + fz_active], 0
    jne fz_pf
    pop rax
    mov [rip + bp_ec], rax
    mov rax, cr2
    mov [rip + bp_cr2], rax
    mov dword ptr [rip + bp_hit], 1
    jmp bp_recover

/* A #PF in the garbage walks: folded into the sum (with P wherever RSVD
 * is set, so that QEMU's erratum does not show), then the next access. */
fz_pf:
    pop rax
    test eax, 8
    jz 1f
    or eax, 1
1:  mov edx, [rip + fz_sum]
    rol edx, 5
    xor edx, eax
    mov rax, cr2
    xor edx, eax
    shr rax, 32
    xor edx, eax
    mov [rip + fz_sum], edx
    add dword ptr [rip + fz_faults], 1
    mov rsp, [rip + fz_sp]
    jmp fz_next

ud_handler:
    cmp dword ptr [rip + bp_in_user], 0
    je 1f
    mov [rip + bp_value], rax
    jmp bp_recover
1:  push 6
    jmp unexpected

    .balign 8
vec_stubs:
    .set vec, 0
    .rept 32
    .balign 8
    push vec
    jmp unexpected
    .set vec, vec + 1
    .endr

unexpected:
    mov esi, offset msg_unexpected
    call say
    pop rax
    mov ebx, eax
    call print_dec32
    /* The two words above: error code and RIP, or RIP and CS. */
    mov al, ' '
    call uart_putc
    mov rax, [rsp]
    mov rdx, rax
    shr rdx, 32
    call print_hex64
    mov al, ' '
    call uart_putc
    mov rax, [rsp + 8]
    mov rdx, rax
    shr rdx, 32
    call print_hex64
    call print_nl
    lea eax, [rbx + 200]
    out DEBUG_EXIT, al
    jmp halt_forever

/* The routines (XDI = the argument). */
rd:                               /* read */
    mov rax, [rdi]
    ret
wr:                               /* write, read back */
    mov dword ptr [rdi], 0x0badf00d
    mov rax, [rdi]
    ret
fx:                               /* fetch: the page holds RET */
    call rdi
    mov eax, 0x600d
    ret
sm_wr:                            /* PT_A[9] = frame 9, through the recursive map */
    mov eax, (FRAMES + 0x9000) | 3
    mov [rdi], rax
    mov eax, T + 0x9000
    invlpg [rax]
    mov rax, [rax]
    ret
wp_off:
    mov rax, cr0
    and eax, ~(1 << 16)
    mov cr0, rax
    jmp flush
wp_on:
    mov rax, cr0
    or eax, 1 << 16
    mov cr0, rax
    jmp flush
nxe_off:
    mov ecx, EFER
    rdmsr
    and eax, ~(1 << 11)
    wrmsr
    jmp flush
nxe_on:
    mov ecx, EFER
    rdmsr
    or eax, 1 << 11
    wrmsr
flush:
    mov rax, cr3
    mov cr3, rax
    ret
/* Garbage tables: G_PAGES pages of pseudo-random entries (xorshift32
 * from a fixed seed) at G_BASE, PML4[5] naming the first, then FUZZ_N
 * reads at pseudo-random addresses under PML4[5]. Every entry has A set
 * and nothing is written, so the garbage stays as it is whatever the
 * MMU; of the entries, 7/8 are present and 1/8 have PS; 5/8 name a page
 * of the garbage, 1/8 a random address below 2^40 (beyond RAM: a table
 * that reads as not present, or MMIO), 1/4 keep all their random bits
 * (reserved bits). With EDI = 1 a quarter of the accesses write a new
 * garbage entry instead: into the garbage (page tables in use: under
 * shadow paging, emulated writes to protected frames) or beyond RAM.
 * Returns faults << 48 | values << 32 | the sum of every fault's error
 * code and CR2, every value read and every write done. */
garbage:
    mov [rip + fz_writes], edi
    mov dword ptr [rip + fz_rng], 0x2545f491
    xor ebx, ebx
1:  call gen_entry
    mov [G_BASE + rbx * 8], rax
    add ebx, 1
    cmp ebx, G_PAGES * 512
    jb 1b
    mov dword ptr [PML4 + 5 * 8], G_BASE | 0x27
    mov rax, cr3
    mov cr3, rax
    mov dword ptr [rip + fz_sum], 0x12345678
    mov dword ptr [rip + fz_faults], 0
    mov dword ptr [rip + fz_values], 0
    mov dword ptr [rip + fz_i], 0
    mov [rip + fz_sp], rsp
    mov dword ptr [rip + fz_active], 1
fz_loop:
    cmp dword ptr [rip + fz_writes], 0
    je fz_read
    call rand32
    test eax, 3
    jnz fz_read
    call gen_entry                /* a quarter are writes of a garbage entry */
    mov [rip + fz_wval], rax
    call fz_address
    mov rdx, [rip + fz_wval]
    mov [rax], rdx
    mov rax, cr3                  /* the TLB may hold what was overwritten */
    mov cr3, rax
    mov edx, [rip + fz_sum]
    rol edx, 9
    xor edx, 0x5757
    mov [rip + fz_sum], edx
    jmp fz_next
fz_read:
    call fz_address
    mov rax, [rax]
    mov edx, [rip + fz_sum]
    rol edx, 7
    xor edx, eax
    shr rax, 32
    rol eax, 3
    xor edx, eax
    mov [rip + fz_sum], edx
    add dword ptr [rip + fz_values], 1
fz_next:
    add dword ptr [rip + fz_i], 1
    cmp dword ptr [rip + fz_i], FUZZ_N
    jb fz_loop
    mov dword ptr [rip + fz_active], 0
    mov dword ptr [PML4 + 5 * 8], 0
    mov rax, cr3
    mov cr3, rax
    mov eax, [rip + fz_faults]
    shl rax, 16
    or eax, [rip + fz_values]
    shl rax, 32
    mov edx, [rip + fz_sum]
    or rax, rdx
    ret

/* RAX = a pseudo-random 8-byte aligned address under PML4[5]. */
fz_address:
    call rand64
    mov rdx, 0x7ffffffff8
    and rax, rdx
    mov rdx, 5 << 39
    or rax, rdx
    ret

/* EAX = the next xorshift32 number. Clobbers EDX. */
rand32:
    mov eax, [rip + fz_rng]
    mov edx, eax
    shl edx, 13
    xor eax, edx
    mov edx, eax
    shr edx, 17
    xor eax, edx
    mov edx, eax
    shl edx, 5
    xor eax, edx
    mov [rip + fz_rng], eax
    ret

/* RAX = 64 pseudo-random bits. Clobbers RCX, RDX. */
rand64:
    call rand32
    mov ecx, eax
    call rand32
    shl rax, 32
    or rax, rcx
    ret

/* RAX = one garbage entry (see `garbage`). Clobbers RCX, RDX, RSI. */
gen_entry:
    call rand64
    mov rsi, rax
    call rand32                   /* EAX: the choices */
    mov ecx, eax
    mov rax, rsi
    or eax, 0x20                  /* A */
    test ecx, 0x18
    jz 1f
    or eax, 1                     /* P: 7/8 */
1:  test ecx, 0x60
    jz 2f
    and eax, ~0x80                /* PS: 1/8 */
2:  and ecx, 7
    cmp ecx, 6
    jae 4f                        /* 6, 7: every bit random */
    mov rdx, 0x8000000000000fff   /* NX and the flags stay */
    and rax, rdx
    cmp ecx, 5
    je 3f
    mov rdx, rsi                  /* 0-4: a page of the garbage */
    shr rdx, 40
    and edx, G_PAGES - 1
    shl edx, 12
    add edx, G_BASE
    or rax, rdx
    ret
3:  mov rdx, 0xfffffff000         /* 5: any address below 2^40 */
    and rdx, rsi
    or rax, rdx
4:  ret

/* Ring 3: IRETQ to user_*, which ends with UD2. */
ur: mov esi, offset user_rd
    jmp to_user
uw: mov esi, offset user_wr
    jmp to_user
ux: mov esi, offset user_fx
to_user:
    mov dword ptr [rip + bp_in_user], 1
    push 0x23
    mov eax, offset user_stack_top
    push rax
    pushfq
    push 0x1b
    push rsi
    iretq
user_rd:
    mov rax, [rdi]
    ud2
user_wr:
    mov dword ptr [rdi], 0x0badf00d
    mov rax, [rdi]
    ud2
user_fx:
    call rdi
    mov eax, 0x600d
    ud2
    .code32

#include "say.inc"

    .section .rodata
    .balign 8
bp_cases:
    VALUE "pte_ok_read", rd, T+0x0000, TAG(0)
    FAULT "pte_rsvd_bit51_read", rd, T+0x1000, 0x09, T+0x1000
    FAULT "pte_rsvd_maxphyaddr_write", wr, T+0x2000, 0x0b, T+0x2000
    FAULT "pte_not_present_read", rd, T+0x3000, 0x00, T+0x3000
    FAULT "pte_not_present_user_write", uw, T+0x3000, 0x06, T+0x3000
    FAULT "pde_not_present_write", wr, 0x400000, 0x02, 0x400000
    FAULT "pdpte_not_present_read", rd, 0x40000000, 0x00, 0x40000000
    FAULT "pml4e_not_present_fetch", fx, 0x10000000000, 0x10, 0x10000000000
    FAULT "pde_rsvd_bit51_read", rd, 0x800000, 0x09, 0x800000
    FAULT "pde_2m_rsvd_bit13_user_read", ur, 0xa00000, 0x0d, 0xa00000
    FAULT "pdpte_rsvd_bit51_write", wr, 0xc0000000, 0x0b, 0xc0000000
    FAULT "pml4e_rsvd_ps_read", rd, 0x8000000000, 0x09, 0x8000000000
    FAULT "pml4e_rsvd_bit51_fetch", fx, 0x20000000000, 0x19, 0x20000000000
    FAULT "pde_table_beyond_ram_read", rd, 0x600000, 0x00, 0x600000
    FAULT "pde_table_beyond_ram_user_write", uw, 0x601000, 0x06, 0x601000
    FAULT "pde_table_beyond_ram_fetch", fx, 0x602000, 0x10, 0x602000
    FAULT "pdpte_table_beyond_ram_write", wr, 0x80000000, 0x02, 0x80000000
    FAULT "pml4e_table_beyond_ram_user_read", ur, 0x18000000000, 0x04, 0x18000000000
    FAULT "ro_write_wp1", wr, T+0x4000, 0x03, T+0x4000
    FAULT "ro_user_write", uw, T+0x4000, 0x07, T+0x4000
    VALUE "ro_user_read", ur, T+0x4000, TAG(4)
    STEP wp_off
    VALUE "ro_write_wp0", wr, T+0x4000, 0x0badf00d
    FAULT "ro_user_write_wp0", uw, T+0x4000, 0x07, T+0x4000
    STEP wp_on
    FAULT "ro_write_wp1_again", wr, T+0x4000, 0x03, T+0x4000
    FAULT "supervisor_page_user_read", ur, T+0x5000, 0x05, T+0x5000
    VALUE "supervisor_page_read", rd, T+0x5000, TAG(5)
    FAULT "nx_fetch", fx, T+0x6000, 0x11, T+0x6000
    FAULT "nx_user_fetch", ux, T+0x6000, 0x15, T+0x6000
    VALUE "nx_read", rd, T+0x6000, TAG(6)
    VALUE "user_page_user_fetch", ux, T+0x7000, 0x600d
    FAULT "supervisor_page_user_fetch", ux, T+0x8000, 0x15, T+0x8000
    STEP nxe_off
    FAULT "xd_without_nxe_read", rd, T+0x6000, 0x09, T+0x6000
    FAULT "xd_without_nxe_fetch", fx, T+0x6000, 0x09, T+0x6000
    FAULT "xd_without_nxe_user_write", uw, T+0x6000, 0x0f, T+0x6000
    VALUE "no_xd_fetch_without_nxe", fx, T+0x7000, 0x600d
    STEP nxe_on
    /* PML4[511] -> the PML4: la(511,511,511,i) maps what PML4[i] names. */
    VALUE "selfmap_read_pml4", rd, 0xfffffffffffff000, PDPT|0x27
    VALUE "selfmap_read_pt", rd, SELFMAP_PT_A+1*8, (FRAMES+0x1000)|1|B51
    FAULT "selfmap_not_present", rd, 0xffffffffffe02000, 0x00, 0xffffffffffe02000
    FAULT "selfmap_rsvd_bit51", rd, 0xffffffffffe04000, 0x09, 0xffffffffffe04000
    FAULT "selfmap_beyond_ram_user_read", ur, 0xffffffffc0600000, 0x04, 0xffffffffc0600000
    VALUE "selfmap_write_pte", sm_wr, SELFMAP_PT_A+9*8, TAG(9)
    VALUE "selfmap_read_written_pte", rd, SELFMAP_PT_A+9*8, (FRAMES+0x9000)|0x23
    /* PD[6] -> the PD: 0xc00000 + i * 4096 maps what PD[i] names. */
    VALUE "pd_loop_read_pt", rd, 0xc01000+9*8, (FRAMES+0x9000)|0x23
    VALUE "pd_loop_read_pde", rd, 0xc06000+1*8, PT_A|0x67
    FAULT "pd_loop_not_present", rd, 0xc02000, 0x00, 0xc02000
    FAULT "pd_loop_rsvd_bit51", rd, 0xc04000, 0x09, 0xc04000
    INFO "garbage_tables", garbage, 0
    INFO "garbage_tables_written", garbage, 1
    .long 0

prefix:         .asciz GUEST_NAME ": "
msg_start:      .asciz "64-bit mode, four-level paging, CR0.WP = 1, EFER.NXE = 1\n"
msg_maxphy:     .asciz "MAXPHYADDR "
msg_unexpected: .asciz "unexpected exception "

    .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff      /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff      /* 0x10: data */
    .quad 0x00affa000000ffff      /* 0x18: 64-bit code, ring 3 */
    .quad 0x00cff2000000ffff      /* 0x20: data, ring 3 */
gdt_tss:                          /* 0x28: the TSS (base filled in) */
    .word 103, 0
    .byte 0, 0x89, 0, 0
    .quad 0
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
    .balign 8
idt_descriptor:
    .word 32 * 16 - 1
    .long idt, 0

    .section .bss
    .balign 8
fz_sp:      .skip 8
fz_active:  .skip 4
fz_rng:     .skip 4
fz_sum:     .skip 4
fz_faults:  .skip 4
fz_values:  .skip 4
fz_i:       .skip 4
fz_writes:  .skip 4
    .balign 8
fz_wval:    .skip 8
    .balign 16
tss:        .skip 104
maxphyaddr: .skip 4
    .balign 16
idt:        .skip 32 * 16
    .balign 16
    .skip 4096
stack_top:
    .skip 4096
fault_stack_top:
    .skip 4096
user_stack_top:
