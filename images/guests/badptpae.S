/* badptpae: garbage page tables in PAE paging (see badpt64.S and the
 * README): reserved bits (bit 51 and bit MAXPHYADDR in a PTE, bit 51 in a
 * PDE, bit 13 and bit 55 of a 2 MiB PDE, XD with EFER.NXE = 0), a
 * non-present entry at each level, a PDPTE and a PDE naming a table
 * beyond RAM, a PDE naming its own page directory (the tables read and
 * written as data through it), CR0.WP, U/S from ring 3 and NX. The
 * PDPTEs themselves stay valid: with bad ones Intel CPUs fault at the MOV
 * to CR3 (#GP) and AMD CPUs under nested paging at the walk (#PF), and
 * this guest checks what both agree on. Ends with the number of
 * mismatches as its status (0: all as expected). */
    .intel_syntax noprefix
    .code32

#define GUEST_NAME "badptpae"

#define PDPT 0x181000
#define PD   0x182000
#define PT_A 0x183000             /* the page table of 2-4 MiB */
#define PT_B 0x184000
#define FRAMES 0x300000           /* frame i at FRAMES + i * 4096 */
#define T    0x200000             /* linear: page i of PT_A at T + i * 4096 */
#define TAG(i) (0x5a0000c3+(i)*0x100) /* first dword of frame i: byte 0 is RET */
#define LOOP 0xc00000             /* PD[6] = the PD: LOOP + i * 4096 maps what PD[i] names */
#define URW  7

#include "com1.inc"
#include "print.inc"
#include "badpt-prot.inc"

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset bp_stack_top
    call uart_init
    call bp_setup

    /* Clear the tables and the frames, tag the frames. */
    mov edi, PDPT
    mov ecx, 4 * 1024
    xor eax, eax
    cld
    rep stosd
    mov edi, FRAMES
    mov ecx, 16 * 1024
    rep stosd
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

    /* PDPT (PDPTEs carry only P) */
    mov dword ptr [PDPT + 0 * 8], PD | 1
    mov dword ptr [PDPT + 2 * 8], 0xc0000000 | 1             /* a PD beyond RAM */
    /* PD */
    mov dword ptr [PD + 0 * 8], 0x87                         /* 0-2 MiB, user */
    mov dword ptr [PD + 1 * 8], PT_A | URW
    mov dword ptr [PD + 3 * 8], 0xc0000000 | URW             /* beyond RAM */
    mov dword ptr [PD + 4 * 8], PT_B | URW
    mov dword ptr [PD + 4 * 8 + 4], 1 << 19                  /* bit 51 */
    mov dword ptr [PD + 5 * 8], 0xa00000 | 0x83 | (1 << 13)  /* 2 MiB, bit 13 */
    mov dword ptr [PD + 6 * 8], PD | URW                     /* itself */
    mov dword ptr [PD + 7 * 8], 0xe00000 | 0x83              /* 2 MiB, bit 55 */
    mov dword ptr [PD + 7 * 8 + 4], 1 << 23
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

    mov eax, cr4
    or eax, 0x20                  /* PAE */
    mov cr4, eax
    mov eax, PDPT
    mov cr3, eax
    mov ecx, EFER
    rdmsr
    or eax, 1 << 11               /* NXE */
    wrmsr
    mov eax, cr0
    or eax, 0x80010000            /* PG, WP */
    mov cr0, eax

    mov esi, offset msg_start
    call say
    mov esi, offset msg_maxphy
    call say
    mov eax, [maxphyaddr]
    call print_dec32
    call print_nl
    jmp bp_run

sm_wr:                            /* PT_A[9] = frame 9, through the loop */
    mov dword ptr [edi], (FRAMES + 0x9000) | 3
    mov dword ptr [edi + 4], 0
    invlpg [T + 0x9000]
    mov eax, [T + 0x9000]
    mov edx, [T + 0x9004]
    ret

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
    FAULT "pdpte_not_present_fetch", fx, 0x40001000, 0x10, 0x40001000
    FAULT "pde_rsvd_bit51_read", rd, 0x800000, 0x09, 0x800000
    FAULT "pde_2m_rsvd_bit13_user_read", ur, 0xa00000, 0x0d, 0xa00000
    FAULT "pde_2m_rsvd_bit55_fetch", fx, 0xe00000, 0x19, 0xe00000
    FAULT "pde_table_beyond_ram_read", rd, 0x600000, 0x00, 0x600000
    FAULT "pde_table_beyond_ram_user_write", uw, 0x601000, 0x06, 0x601000
    FAULT "pde_table_beyond_ram_fetch", fx, 0x602000, 0x10, 0x602000
    FAULT "pdpte_table_beyond_ram_write", wr, 0x80000000, 0x02, 0x80000000
    FAULT "pdpte_table_beyond_ram_user_read", ur, 0x80201000, 0x04, 0x80201000
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
    VALUE "pd_loop_read_pt", rd, LOOP+0x1000+1*8, (FRAMES+0x1000)|1|(1<<51)
    VALUE "pd_loop_write_pte", sm_wr, LOOP+0x1000+9*8, TAG(9)
    VALUE "pd_loop_read_written_pte", rd, LOOP+0x1000+9*8, (FRAMES+0x9000)|0x23
    VALUE "pd_loop_read_pde", rd, LOOP+0x6000+1*8, PT_A|0x67
    FAULT "pd_loop_not_present", rd, LOOP+0x2000, 0x00, LOOP+0x2000
    FAULT "pd_loop_rsvd_bit51", rd, LOOP+0x4000, 0x09, LOOP+0x4000
    FAULT "pd_loop_rsvd_bit55_user_write", uw, LOOP+0x7000, 0x0f, LOOP+0x7000
    .long 0

msg_start:  .asciz "PAE paging, CR0.WP = 1, EFER.NXE = 1\n"
msg_maxphy: .asciz "MAXPHYADDR "

    .section .bss
maxphyaddr: .skip 4
