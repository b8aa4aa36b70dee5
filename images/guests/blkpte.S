/* blkpte: shadow coherence when a device server, not the guest's CPU,
 * writes a live page table: a legal virtio-blk READ whose data buffer is
 * the page table itself. A multiboot v1 kernel (pcboard.inc), entered in
 * flat protected mode with paging off; run with `--board pc --disk FILE`.
 *
 * The test writes the disk image on the host: sectors 0-7 hold a page
 * table whose entry 0 is 0x00303003 (frame 0x303000, present, writable),
 * the rest zero.
 *
 * The guest finds the virtio-blk function on PCI bus 0 and sets it up
 * (virtio-pci.inc), then turns on 32-bit paging with CR4.PSE: every 4 MiB
 * one to one in a large page (RAM and the device's BARs alike), except VA
 * 0x00800000, mapped through its own page table (pt_test) to frame
 * 0x300000, which holds MARK_A; frame 0x303000 holds MARK_B. It reads VA
 * (MARK_A: the shadow MMU now holds the translation and write-protects
 * pt_test), then reads sectors 0-7 from the disk into pt_test, waits for
 * the used ring, checks the status byte and that the PTE now reads
 * 0x00303003, reloads CR3 (a full TLB flush: what the architecture asks
 * after changing a PTE) and reads VA again: it must see MARK_B.
 *
 * The guest's CPU never writes pt_test after the first read: under shadow
 * paging nothing but the disk-driver's report of the frames it wrote
 * (`ipc_proto::guest_writes`) tells the mmu-server that the table changed,
 * and a CR3 load alone keeps a write-protected table's shadow as it is.
 * Prints "blkpte: PASS ..." and ends with status 0 on port 0xF4, or
 * "blkpte: FAIL ..." and status 1. */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "pcboard.inc"
#include "virtio-pci.inc"

#define TEST_VA    0x00800000
#define FRAME_A    0x00300000
#define FRAME_B    0x00303000
#define MARK_A     0xaaaa1111
#define MARK_B     0xbbbb2222
#define PRESENT_RW 0x003
#define LARGE_RW   0x083          /* a 4 MiB page: PS, RW, P */
#define CR4_PSE    0x10

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
    /* 4 GiB one to one in 4 MiB pages, but 0x00800000-0x00bfffff through
     * pt_test. */
    mov edi, offset pd
    mov eax, LARGE_RW
    mov ecx, 1024
3:  mov [edi], eax
    add eax, 0x400000
    add edi, 4
    loop 3b
    mov dword ptr [pt_test], FRAME_A | PRESENT_RW
    mov eax, offset pt_test
    or eax, PRESENT_RW
    mov [pd + (TEST_VA >> 22) * 4], eax

    mov eax, cr4
    or eax, CR4_PSE
    mov cr4, eax
    mov eax, offset pd
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000                /* PG */
    mov cr0, eax
    jmp paged
paged:
    mov eax, [TEST_VA]
    cmp eax, MARK_A
    je 4f
    SAY "FAIL: 0x00800000 does not read frame 0x300000, read "
    jmp fail_eax
4:  SAY "0x00800000 reads frame 0x300000\n"

    /* VIRTIO_BLK_T_IN of sectors 0-7 (4096 bytes) into pt_test. */
    mov dword ptr [HDR_GPA], 0
    mov dword ptr [HDR_GPA + 4], 0
    mov dword ptr [HDR_GPA + 8], 0
    mov dword ptr [HDR_GPA + 12], 0
    mov byte ptr [STAT_GPA], 0xff
    mov eax, offset pt_test
    DESC 0, HDR_GPA, 0, 16, D_NEXT, 1
    DESC 1, eax, 0, 4096, (D_WRITE | D_NEXT), 2
    DESC 2, STAT_GPA, 0, 1, D_WRITE, 0
    xor eax, eax
    call submit
    /* Under shadow paging the server answers during the notification's
     * exit; under nested paging the queue is processed after the guest
     * resumes. Only reads from here on: no write of the guest's own may
     * reach pt_test. */
    mov ecx, 0x1000000
5:  movzx eax, word ptr [USED_GPA + 2]
    cmp eax, [avail_next]
    je 6f
    pause
    sub ecx, 1
    jnz 5b
    SAY "FAIL: the read did not complete, used index "
    jmp fail_eax
6:  movzx eax, byte ptr [STAT_GPA]
    test eax, eax
    jz 7f
    SAY "FAIL: the read's status byte is "
    jmp fail_eax
7:  mov eax, [pt_test]
    and eax, 0xffffff9f               /* A and D are the walker's */
    cmp eax, FRAME_B | PRESENT_RW
    je 8f
    SAY "FAIL: the read did not put 0x00303003 in the pte, read "
    jmp fail_eax
8:  SAY "virtio-blk read sectors 0-7 into the live page table: pte 0x00303003\n"

    mov eax, cr3
    mov cr3, eax
    mov eax, [TEST_VA]
    cmp eax, MARK_B
    je 9f
    SAY "FAIL: stale translation after mov cr3, read "
    jmp fail_eax
9:  SAY "PASS: after mov cr3, 0x00800000 reads frame 0x303000\n"
    jmp pc_finish

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
pt_test:  .skip 4096
