/* badpt32: garbage page tables in 32-bit paging with CR4.PSE (see
 * badpt64.S and the README). The only reserved bit of this format is bit
 * 21 of a 4 MiB PDE (PSE-36 bits beyond MAXPHYADDR too, none with 40
 * bits); the rest: a non-present PDE and PTE, a PDE naming a page table
 * beyond RAM, a PDE naming its own page directory (the tables read and
 * written as data through it), CR0.WP and U/S from ring 3. EFER.NXE is
 * set, yet fetch faults carry no I/D: NX exists only with PAE. Ends with
 * the number of mismatches as its status (0: all as expected). */
    .intel_syntax noprefix
    .code32

#define GUEST_NAME "badpt32"

#define PD   0x182000
#define PT_A 0x183000             /* the page table of 4-8 MiB */
#define FRAMES 0x300000           /* frame i at FRAMES + i * 4096 */
#define T    0x400000             /* linear: page i of PT_A at T + i * 4096 */
#define TAG(i) (0x5a0000c3+(i)*0x100) /* first dword of frame i: byte 0 is RET */
#define LOOP 0x1400000            /* PD[5] = the PD: LOOP + i * 4096 maps what PD[i] names */
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
    mov edi, PD
    mov ecx, 2 * 1024
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

    /* PD */
    mov dword ptr [PD + 0 * 4], 0x87                         /* 0-4 MiB, user */
    mov dword ptr [PD + 1 * 4], PT_A | URW
    mov dword ptr [PD + 3 * 4], 0xc0000000 | URW             /* beyond RAM */
    mov dword ptr [PD + 4 * 4], 0x1000000 | 0x83 | (1 << 21) /* 4 MiB, bit 21 */
    mov dword ptr [PD + 5 * 4], PD | URW                     /* itself */
    /* PT_A */
    mov dword ptr [PT_A + 0 * 4], (FRAMES + 0x0000) | URW
    mov dword ptr [PT_A + 4 * 4], (FRAMES + 0x4000) | 5      /* read-only, user */
    mov dword ptr [PT_A + 5 * 4], (FRAMES + 0x5000) | 3      /* supervisor */
    mov dword ptr [PT_A + 7 * 4], (FRAMES + 0x7000) | URW
    mov dword ptr [PT_A + 8 * 4], (FRAMES + 0x8000) | 3      /* supervisor */

    mov eax, cr4
    or eax, 0x10                  /* PSE */
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov ecx, EFER
    rdmsr
    or eax, 1 << 11               /* NXE: no effect without PAE */
    wrmsr
    mov eax, cr0
    or eax, 0x80010000            /* PG, WP */
    mov cr0, eax

    mov esi, offset msg_start
    call say
    jmp bp_run

sm_wr:                            /* PT_A[9] = frame 9, through the loop */
    mov dword ptr [edi], (FRAMES + 0x9000) | 3
    invlpg [T + 0x9000]
    mov eax, [T + 0x9000]
    mov edx, [T + 0x9004]
    ret

    .section .rodata
    .balign 8
bp_cases:
    VALUE "pte_ok_read", rd4, T+0x0000, TAG(0)
    FAULT "pte_not_present_read", rd4, T+0x3000, 0x00, T+0x3000
    FAULT "pte_not_present_user_write", uw, T+0x3000, 0x06, T+0x3000
    FAULT "pde_not_present_write", wr, 0x800000, 0x02, 0x800000
    FAULT "pde_not_present_fetch", fx, 0x801000, 0x00, 0x801000
    FAULT "pde_4m_rsvd_bit21_read", rd4, 0x1000000, 0x09, 0x1000000
    FAULT "pde_4m_rsvd_bit21_user_fetch", ux, 0x1001000, 0x0d, 0x1001000
    FAULT "pde_table_beyond_ram_read", rd4, 0xc00000, 0x00, 0xc00000
    FAULT "pde_table_beyond_ram_user_write", uw, 0xc01000, 0x06, 0xc01000
    FAULT "pde_table_beyond_ram_fetch", fx, 0xc02000, 0x00, 0xc02000
    FAULT "ro_write_wp1", wr, T+0x4000, 0x03, T+0x4000
    FAULT "ro_user_write", uw, T+0x4000, 0x07, T+0x4000
    VALUE "ro_user_read", ur, T+0x4000, TAG(4)
    STEP wp_off
    VALUE "ro_write_wp0", wr, T+0x4000, 0x0badf00d
    FAULT "ro_user_write_wp0", uw, T+0x4000, 0x07, T+0x4000
    STEP wp_on
    FAULT "ro_write_wp1_again", wr, T+0x4000, 0x03, T+0x4000
    FAULT "supervisor_page_user_read", ur, T+0x5000, 0x05, T+0x5000
    VALUE "supervisor_page_read", rd4, T+0x5000, TAG(5)
    FAULT "supervisor_page_user_fetch", ux, T+0x8000, 0x05, T+0x8000
    VALUE "user_page_user_fetch", ux, T+0x7000, 0x600d
    VALUE "pd_loop_write_pte", sm_wr, LOOP+0x1000+9*4, TAG(9)
    VALUE "pd_loop_read_written_pte", rd4, LOOP+0x1000+9*4, (FRAMES+0x9000)|0x23
    VALUE "pd_loop_read_pde", rd4, LOOP+0x5000+1*4, PT_A|0x67
    FAULT "pd_loop_not_present", rd4, LOOP+0x2000, 0x00, LOOP+0x2000
    FAULT "pd_loop_not_present_user_fetch", ux, LOOP+0x6000, 0x04, LOOP+0x6000
    .long 0

msg_start:  .asciz "32-bit paging, CR4.PSE = 1, CR0.WP = 1\n"
