/* blkpte: shadow coherence when a device server, not the guest's CPU,
 * writes a live page table: a legal virtio-blk READ whose data buffer is
 * the page table itself. A multiboot v1 kernel (pcboard.inc), entered in
 * flat protected mode with paging off; run with `--board pc --disk FILE`.
 *
 * The test writes the disk image on the host: sectors 0-7 hold a page
 * table whose entry 0 is 0x00303003 (frame 0x303000, present, writable),
 * the rest zero; sectors 8-15 the dword 0x5a5a5a5a over and over; sectors
 * 16-23 a page table whose entry 0 is 0x00306003.
 *
 * The guest finds the virtio-blk function on PCI bus 0 and sets it up
 * (virtio-pci.inc), then turns on 32-bit paging with CR4.PSE: every 4 MiB
 * one to one in a large page (RAM and the device's BARs alike), except VA
 * 0x00800000, mapped through its own page table (pt_test) to frame
 * 0x300000, which holds MARK_A; frames 0x303000 and 0x306000 hold MARK_B
 * and MARK_C. It reads VA (MARK_A: the shadow MMU now holds the
 * translation and write-protects pt_test), then
 *  1. reads sectors 0-7 into pt_test, waits for the used ring, checks the
 *     status byte and that the PTE now reads 0x00303003, reloads CR3 (a
 *     full TLB flush: what the architecture asks after changing a PTE) and
 *     reads VA again: it must see MARK_B;
 *  2. reads sectors 8-23 into the page before pt_test (scratch) and
 *     pt_test, one 8 KiB buffer whose second frame is the table; the same
 *     checks, and VA must read MARK_C.
 *
 * The guest's CPU never writes pt_test after the first read: under shadow
 * paging nothing but the disk-driver's report of the frames it wrote
 * (`ipc_proto::guest_writes`) tells the mmu-server that the table changed,
 * and a CR3 load alone keeps a write-protected table's shadow as it is.
 * Prints "blkpte: PASS ..." after each step and ends with status 0 on port
 * 0xF4 ("blkpte: all checks passed"), or "blkpte: FAIL ..." and status 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "pcboard.inc"
#include "virtio-pci.inc"
#include "paging32.inc"

#define TEST_VA    0x00800000
#define FRAME_A    0x00300000
#define FRAME_B    0x00303000
#define MARK_A     0xaaaa1111
#define MARK_B     0xbbbb2222
#define FRAME_C    0x00306000
#define MARK_C     0xcccc3333
#define SCRATCH_FILL 0x5a5a5a5a

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call pc_init
    mov eax, ID_BLK
    call find_device
    test eax, eax
    jnz 1f
    SAY "FAIL: no virtio-blk function on bus 0 (run with --board pc --disk FILE)\n"
    jmp fail
1:  mov dword ptr [dev_queue], 0      /* requestq */
    call dev_init
    test eax, eax
    jnz 2f
    SAY "FAIL: the virtio-blk function refused the set-up\n"
    jmp fail
2:  SAY "virtio-blk set up, paging off\n"

    mov dword ptr [FRAME_A], MARK_A
    mov dword ptr [FRAME_B], MARK_B
    mov dword ptr [FRAME_C], MARK_C
    /* 4 GiB one to one in 4 MiB pages, but 0x00800000-0x00bfffff through
     * pt_test. */
    FILL_ENTRIES pd, LARGE_RW, 0x400000, 1024
    mov dword ptr [pt_test], FRAME_A | PRESENT_RW
    PDE_TO pd, TEST_VA, pt_test
    PAGING_ON pd, CR4_PSE
    mov eax, [TEST_VA]
    cmp eax, MARK_A
    je 4f
    SAY "FAIL: 0x00800000 does not read frame 0x300000, read "
    jmp fail_eax
4:  SAY "0x00800000 reads frame 0x300000\n"

    /* 1. Sectors 0-7 (4096 bytes) into pt_test. */
    xor eax, eax
    mov edx, offset pt_test
    mov ecx, 4096
    call blk_read
    test eax, eax
    jz fail
    mov ebx, FRAME_B | PRESENT_RW
    call check_pte
    test eax, eax
    jz fail
    SAY "virtio-blk read sectors 0-7 into the live page table: pte 0x00303003\n"
    mov eax, cr3
    mov cr3, eax
    mov eax, [TEST_VA]
    cmp eax, MARK_B
    je 9f
    SAY "FAIL: stale translation after mov cr3, read "
    jmp fail_eax
9:  SAY "PASS: after mov cr3, 0x00800000 reads frame 0x303000\n"

    /* 2. Sectors 8-23 (8192 bytes) into the scratch page and pt_test
     * behind it: the table is the second frame of one buffer (the
     * translation to frame 0x303000 is cached again by the read above). */
    mov eax, 8
    mov edx, offset scratch
    mov ecx, 8192
    call blk_read
    test eax, eax
    jz fail
    mov eax, [scratch]
    cmp eax, SCRATCH_FILL
    je 10f
    SAY "FAIL: the read did not fill the scratch page, read "
    jmp fail_eax
10: mov ebx, FRAME_C | PRESENT_RW
    call check_pte
    test eax, eax
    jz fail
    SAY "virtio-blk read sectors 8-23 into a scratch page and the live page table: pte 0x00306003\n"
    mov eax, cr3
    mov cr3, eax
    mov eax, [TEST_VA]
    cmp eax, MARK_C
    je 11f
    SAY "FAIL: stale translation after mov cr3, read "
    jmp fail_eax
11: SAY "PASS: after mov cr3, 0x00800000 reads frame 0x306000\n"
    jmp pc_finish

/* VIRTIO_BLK_T_IN of ECX bytes from sector EAX into guest-physical EDX,
 * one data descriptor; waits for the used ring. EAX = 1 when it completed
 * with status OK, else 0 after a FAIL line. Only reads of guest memory
 * after the notification: no write of the guest's own may reach pt_test. */
blk_read:
    mov dword ptr [HDR_GPA], 0
    mov dword ptr [HDR_GPA + 4], 0
    mov dword ptr [HDR_GPA + 8], eax
    mov dword ptr [HDR_GPA + 12], 0
    mov byte ptr [STAT_GPA], 0xff
    DESC 0, HDR_GPA, 0, 16, D_NEXT, 1
    DESC 1, edx, 0, ecx, (D_WRITE | D_NEXT), 2
    DESC 2, STAT_GPA, 0, 1, D_WRITE, 0
    xor eax, eax
    call submit
    /* Under shadow paging the server answers during the notification's
     * exit; under nested paging the queue is processed after the guest
     * resumes. */
    mov ecx, 0x1000000
1:  movzx eax, word ptr [USED_GPA + 2]
    cmp eax, [avail_next]
    je 2f
    pause
    sub ecx, 1
    jnz 1b
    SAY "FAIL: the read did not complete, used index "
    jmp 3f
2:  movzx eax, byte ptr [STAT_GPA]
    test eax, eax
    jz 4f
    SAY "FAIL: the read's status byte is "
3:  call print_hex32
    call print_nl
    xor eax, eax
    ret
4:  mov eax, 1
    ret

/* EAX = 1 when pt_test[0], but for A and D (the walker's), is EBX; else
 * 0 after a FAIL line. */
check_pte:
    mov eax, [pt_test]
    and eax, 0xffffff9f
    cmp eax, ebx
    je 1f
    SAY "FAIL: the read did not put the disk's pte in the page table, read "
    call print_hex32
    call print_nl
    xor eax, eax
    ret
1:  mov eax, 1
    ret

fail_eax:
    call print_hex32
    call print_nl
fail:
    add dword ptr [pc_failures], 1
    jmp pc_finish

    .section .rodata
prefix: .asciz "blkpte: "

    .section .bss
    .balign 4096
pd:       .skip 4096
scratch:  .skip 4096
pt_test:  .skip 4096
