/* hostile-driver: a virtio driver that breaks the rules on purpose, from
 * inside the guest (a multiboot v1 kernel, see pcboard.inc; flat
 * protected mode, paging off, interrupts off).
 *
 * It finds the virtio-console function (`--console hvc0`: vendor 0x1af4,
 * device 0x1043) and, when there are, the virtio-blk function
 * (`--disk`: device 0x1042) and the virtio-net function (`--net user`:
 * device 0x1041, its transmitq attacked) by scanning bus 0 through 0xCF8/0xCFC, reads
 * their BARs and capabilities (common and notify configuration, the MSI-X
 * table), and for each attack:
 *  1. resets the device and sets it up as a driver does (VIRTIO 1.2,
 *     3.1.1): ACKNOWLEDGE, DRIVER, VERSION_1 (+ INDIRECT_DESC when
 *     offered), FEATURES_OK, one queue of 8 (the console's transmitq,
 *     the disk's requestq) with its rings at 4 MiB, DRIVER_OK;
 *  2. attacks (below);
 *  3. reads the device status: DEVICE_NEEDS_RESET (0x40) must be set
 *     exactly for the attacks where 2.1.2 and 2.7 say the driver broke
 *     the queue; after the others the device must still complete a legal
 *     request without a reset;
 *  4. resets the device (status 0 must read back 0), sets it up again and
 *     sends a legal request (the console: a line of text, which the
 *     virtio-console server prints; the disk: a read of sector 0 whose
 *     status byte must be OK; the network: a 60-byte broadcast frame),
 *     which must complete.
 * An attack is contained when all of that holds. Each prints
 * `hostile-driver: DEVICE ATTACK: status 0xSS, needs-reset yes|no
 * (expected yes|no), alive: contained` (or `NOT CONTAINED`); at the end
 * `hostile-driver: N attacks, M contained`, and the status is N - M.
 *
 * The attacks (descriptors device-readable unless said):
 *  desc-loop      a descriptor whose next is itself (NEXT set)
 *  long-chain     8 descriptors chained in a circle: a chain longer than
 *                 the queue
 *  wrapping-len   addr 0xFFFFFFFFFFFFF000, len 0x2000: addr + len wraps
 *  beyond-ram     a buffer at 1 GiB (guest RAM is 16 MiB)
 *  apic-mmio      a buffer at the local APIC, 0xFEE00000
 *  own-bar        a buffer in the device's own BAR 0
 *  indirect-self  an indirect table whose only entry is an indirect
 *                 descriptor naming the table itself (nested indirect,
 *                 2.7.5.3.1)
 *  avail-jump     the available index moved by 9 on a queue of 8
 *  head-range     head 8 in the available ring of a queue of 8
 *  notify-off     notifications of a queue never enabled and of one the
 *                 device does not have: ignored (no NEEDS_RESET)
 *  msix-range     writes past the MSI-X table, into the PBA (read-only),
 *                 at the BAR's last dword and past it; a queue vector
 *                 beyond the table must read back NO_VECTOR (0xFFFF): no
 *                 NEEDS_RESET
 *  bar-over-ram   BAR 0 moved over guest RAM at 5 MiB: RAM stays RAM (a
 *                 pattern reads back, and a write of 0 where the status
 *                 register would be does not reset the device); BAR 0
 *                 put back, the device answers there again: no
 *                 NEEDS_RESET
 * and on the network's transmitq frames that are data, not queue rules
 * (dropped and counted by the device; no NEEDS_RESET, the device goes on):
 *  hdr-csum       virtio_net_hdr flags NEEDS_CSUM, never negotiated
 *  hdr-gso        gso_type TCPV4, never negotiated
 *  short-frame    10 bytes of frame: no Ethernet header
 *  hdr-only       the header alone
 *  writable-tx    a device-writable buffer after the frame
 *  oversized      a frame of 2000 bytes, more than 1514 */
    .intel_syntax noprefix
    .code32

#include "com1.inc"
#include "print.inc"
#include "pcboard.inc"

#include "virtio-pci.inc"

#define ID_NET     0x1041
#define NET_FRAME  (12 + 60)                /* header and a short frame */

#define RAM_GPA   0x500000   /* where bar-over-ram moves BAR 0 */

/* One attack: name, procedure, whether it must end in NEEDS_RESET. */
.macro ATTACK name, proc, nr
    .pushsection .rodata.names
.Lname\@: .asciz "\name"
    .popsection
    .long .Lname\@, \proc, \nr
.endm

    .section .text.start, "ax"
    .globl _start
_start:
    cli
    mov esp, offset stack_top
    call pc_init
    mov eax, ID_CONSOLE
    call find_device
    test eax, eax
    jnz 1f
    SAY "no virtio-console function on bus 0 (run with --board pc --console hvc0)\n"
    mov eax, 0
    BAD "virtio-console"
    jmp pc_finish
1:  mov dword ptr [dev_queue], 1      /* transmitq */
    mov dword ptr [dev_kind], 0
    mov dword ptr [dev_name], offset name_console
    call run_attacks
    mov eax, ID_BLK
    call find_device
    test eax, eax
    jz 2f
    mov dword ptr [dev_queue], 0      /* requestq */
    mov dword ptr [dev_kind], 1
    mov dword ptr [dev_name], offset name_blk
    call run_attacks
2:  mov eax, ID_NET
    call find_device
    test eax, eax
    jz 3f
    mov dword ptr [dev_queue], 1      /* transmitq */
    mov dword ptr [dev_kind], 2
    mov dword ptr [dev_name], offset name_net
    call run_attacks
    mov dword ptr [table_start], offset net_attack_table
    mov dword ptr [table_end], offset net_attack_table_end
    call run_attacks
3:  mov esi, offset prefix
    call uart_puts
    mov eax, [n_attacks]
    call print_dec32
    PUTS " attacks, "
    mov eax, [n_contained]
    call print_dec32
    PUTS " contained\n"
    mov eax, [n_attacks]
    sub eax, [n_contained]
    add [pc_failures], eax
    jmp pc_finish

/* A legal request on the set-up queue; EAX = 1 when it completed (the
 * used index reached the available one; the disk's status byte OK). */
legal_request:
    push ecx
    cmp dword ptr [dev_kind], 2
    jne 1f
    call net_frame
    DESC 0, BUF_GPA, 0, NET_FRAME, 0, 0
    jmp 3f
1:  cmp dword ptr [dev_kind], 0
    jne 2f
    mov esi, offset alive_text
    mov edi, BUF_GPA
    mov ecx, alive_text_end - alive_text
    rep movsb
    DESC 0, BUF_GPA, 0, (alive_text_end - alive_text), 0, 0
    jmp 3f
    /* The disk: read sector 0 (header, 512 bytes, status). */
2:  mov dword ptr [HDR_GPA], 0          /* VIRTIO_BLK_T_IN */
    mov dword ptr [HDR_GPA + 4], 0
    mov dword ptr [HDR_GPA + 8], 0      /* sector */
    mov dword ptr [HDR_GPA + 12], 0
    mov byte ptr [STAT_GPA], 0xff
    DESC 0, HDR_GPA, 0, 16, D_NEXT, 1
    DESC 1, DATA_GPA, 0, 512, (D_WRITE | D_NEXT), 2
    DESC 2, STAT_GPA, 0, 1, D_WRITE, 0
3:  xor eax, eax
    call submit
    mov ecx, 0x100000
    /* The device completes it later: at the guest's next exit or PAUSE.
     * The first time, say whether it had done so already, before this
     * instruction (the reads of RAM here make no exit). */
    cmp dword ptr [async_told], 0
    jne 4f
    mov dword ptr [async_told], 1
    movzx eax, word ptr [USED_GPA + 2]
    cmp eax, [avail_next]
    jne 1f
    SAY "the first request was done before the guest's next instruction: yes\n"
    jmp 4f
1:  SAY "the first request was done before the guest's next instruction: no\n"
4:  movzx eax, word ptr [USED_GPA + 2]
    cmp eax, [avail_next]
    je 5f
    pause
    sub ecx, 1
    jnz 4b
    xor eax, eax
    jmp 9f
5:  mov eax, 1
    cmp dword ptr [dev_kind], 1
    jne 9f
    cmp byte ptr [STAT_GPA], 0
    je 9f
    xor eax, eax
9:  pop ecx
    ret

/* Runs every attack of the table at [table_start, table_end) against
 * the device found. */
run_attacks:
    push ebx
    mov ebx, [table_start]
1:  cmp ebx, [table_end]
    jae 9f
    call run_attack
    add ebx, 12
    jmp 1b
9:  pop ebx
    ret

/* One attack, EBX = its table entry; prints its line. */
run_attack:
    pushad
    add dword ptr [n_attacks], 1
    mov dword ptr [verdict], 1
    call dev_init
    test eax, eax
    jnz 1f
    mov dword ptr [verdict], 0
1:  call dword ptr [ebx + 4]
    test eax, eax
    jnz 2f
    mov dword ptr [verdict], 0
    /* A device works on a notification after it, as the guest goes on
     * (splitvisor: at the guest's next exit or PAUSE). Poll the status
     * with PAUSE, as drivers spin, until NEEDS_RESET or 16 turns (each
     * read of the status is an exit already). */
2:  mov ecx, [dev_common]
    mov edx, 16
15: movzx eax, byte ptr [ecx + C_STATUS]
    test eax, NEEDS_RESET
    jnz 16f
    pause
    sub edx, 1
    jnz 15b
16: mov [status_seen], eax
    and eax, NEEDS_RESET
    setnz al
    movzx eax, al
    cmp eax, [ebx + 8]
    je 3f
    mov dword ptr [verdict], 0
3:  cmp dword ptr [ebx + 8], 0
    jne 4f
    /* Not a broken queue: the device goes on without a reset. */
    call legal_request
    test eax, eax
    jnz 4f
    mov dword ptr [verdict], 0
4:  mov ecx, [dev_common]
    mov byte ptr [ecx + C_STATUS], 0
    cmp byte ptr [ecx + C_STATUS], 0
    je 5f
    mov dword ptr [verdict], 0
5:  call dev_init
    test eax, eax
    jz 6f
    call legal_request
    test eax, eax
    jnz 7f
6:  mov dword ptr [verdict], 0
7:  mov esi, offset prefix
    call uart_puts
    mov esi, [dev_name]
    call uart_puts
    mov esi, [ebx]
    call uart_puts
    PUTS ": status 0x"
    mov eax, [status_seen]
    call print_hex8
    PUTS ", needs-reset "
    test eax, NEEDS_RESET
    jz 8f
    PUTS "yes"
    jmp 10f
8:  PUTS "no"
10: PUTS " (expected "
    cmp dword ptr [ebx + 8], 0
    je 11f
    PUTS "yes"
    jmp 12f
11: PUTS "no"
12: PUTS "): "
    cmp dword ptr [verdict], 0
    je 13f
    add dword ptr [n_contained], 1
    PUTS "contained\n"
    jmp 14f
13: PUTS "NOT CONTAINED\n"
14: popad
    ret

/* Writes AL as two hex digits. Keeps registers. */
print_hex8:
    push eax
    push ebx
    mov ebx, eax
    shr al, 4
    call 1f
    mov al, bl
    and al, 0x0f
    call 1f
    pop ebx
    pop eax
    ret
1:  add al, '0'
    cmp al, '9'
    jbe 2f
    add al, 'a' - '9' - 1
2:  jmp uart_putc

/* A virtio_net_hdr of zeros and a 60-byte broadcast frame from
 * 02:53:56:00:00:01, type 0x88b5 (local experimental), at BUF_GPA; the
 * rest of the page zero. Keeps registers. */
net_frame:
    push eax
    push ecx
    push edi
    mov edi, BUF_GPA
    mov ecx, 1024
    xor eax, eax
    rep stosd
    mov dword ptr [BUF_GPA + 12], 0xffffffff
    mov word ptr [BUF_GPA + 16], 0xffff
    mov dword ptr [BUF_GPA + 18], 0x00565302
    mov word ptr [BUF_GPA + 22], 0x0100
    mov word ptr [BUF_GPA + 24], 0xb588
    pop edi
    pop ecx
    pop eax
    ret

/* ---- the attacks: each returns EAX = 1 unless a check of its own
 * failed ---- */

a_hdr_csum:
    call net_frame
    mov byte ptr [BUF_GPA], 1               /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
    DESC 0, BUF_GPA, 0, NET_FRAME, 0, 0
    jmp submit_head0

a_hdr_gso:
    call net_frame
    mov byte ptr [BUF_GPA + 1], 1           /* VIRTIO_NET_HDR_GSO_TCPV4 */
    DESC 0, BUF_GPA, 0, NET_FRAME, 0, 0
    jmp submit_head0

a_short_frame:
    call net_frame
    DESC 0, BUF_GPA, 0, (12 + 10), 0, 0
    jmp submit_head0

a_hdr_only:
    call net_frame
    DESC 0, BUF_GPA, 0, 12, 0, 0
    jmp submit_head0

a_writable_tx:
    call net_frame
    DESC 0, BUF_GPA, 0, NET_FRAME, D_NEXT, 1
    DESC 1, DATA_GPA, 0, 64, D_WRITE, 0
    jmp submit_head0

a_oversized:
    call net_frame
    DESC 0, BUF_GPA, 0, (12 + 2000), 0, 0
    jmp submit_head0

a_desc_loop:
    DESC 0, BUF_GPA, 0, 1, D_NEXT, 0
    jmp submit_head0

a_long_chain:
    DESC 0, BUF_GPA, 0, 1, D_NEXT, 1
    DESC 1, BUF_GPA, 0, 1, D_NEXT, 2
    DESC 2, BUF_GPA, 0, 1, D_NEXT, 3
    DESC 3, BUF_GPA, 0, 1, D_NEXT, 4
    DESC 4, BUF_GPA, 0, 1, D_NEXT, 5
    DESC 5, BUF_GPA, 0, 1, D_NEXT, 6
    DESC 6, BUF_GPA, 0, 1, D_NEXT, 7
    DESC 7, BUF_GPA, 0, 1, D_NEXT, 0
    jmp submit_head0

a_wrapping_len:
    DESC 0, 0xfffff000, 0xffffffff, 0x2000, 0, 0
    jmp submit_head0

a_beyond_ram:
    DESC 0, 0x40000000, 0, 64, 0, 0
    jmp submit_head0

a_apic_mmio:
    DESC 0, 0xfee00000, 0, 64, 0, 0
    jmp submit_head0

a_own_bar:
    mov eax, [dev_bar0]
    DESC 0, eax, 0, 64, 0, 0
    jmp submit_head0

a_indirect_self:
    DESC 0, INDIR_GPA, 0, 16, D_INDIRECT, 0
    mov dword ptr [INDIR_GPA], INDIR_GPA
    mov dword ptr [INDIR_GPA + 4], 0
    mov dword ptr [INDIR_GPA + 8], 16
    mov word ptr [INDIR_GPA + 12], D_INDIRECT
    mov word ptr [INDIR_GPA + 14], 0
    jmp submit_head0

a_avail_jump:
    mov word ptr [AVAIL_GPA + 2], QSIZE + 1
    call notify
    mov eax, 1
    ret

a_head_range:
    mov eax, QSIZE
    call submit
    mov eax, 1
    ret

submit_head0:
    xor eax, eax
    call submit
    mov eax, 1
    ret

a_notify_off:
    mov ecx, [dev_notify]
    /* Queue 0 when it is not the one set up (the console's receiveq). */
    cmp dword ptr [dev_queue], 0
    je 1f
    mov word ptr [ecx], 0
1:  mov eax, [dev_mult]
    imul eax, 7
    mov word ptr [ecx + eax], 7
    mov eax, 1
    ret

a_msix_range:
    mov ecx, [dev_msix]
    mov eax, [dev_msix_n]
    shl eax, 4
    mov dword ptr [ecx + eax], 0xfee00000
    mov dword ptr [ecx + eax + 8], 0x41
    mov dword ptr [ecx + 0x7fc], 0xffffffff
    mov dword ptr [ecx + 0x800], 0xffffffff
    mov dword ptr [ecx + 0xffc], 0xffffffff
    mov dword ptr [ecx + 0x1000], 0xffffffff
    /* A queue vector beyond the table reads back as NO_VECTOR. */
    mov edx, [dev_common]
    mov eax, [dev_msix_n]
    add eax, 5
    mov [edx + C_QMSIX], ax
    movzx eax, word ptr [edx + C_QMSIX]
    cmp eax, 0xffff
    jne 1f
    mov eax, 1
    ret
1:  SAY "queue vector beyond the table read back "
    call print_hex32
    call print_nl
    xor eax, eax
    ret

a_bar_over_ram:
    push ebx
    push edi
    mov edi, RAM_GPA
    mov ecx, 1024
    mov eax, 0x5a5a5a5a
    rep stosd
    mov ebx, 1                          /* the verdict */
    mov eax, 0x10
    call cfg_read
    mov edi, eax                        /* BAR 0 as it was */
    mov ecx, RAM_GPA
    mov eax, 0x10
    call cfg_write
    /* Where the common configuration would now be: RAM. */
    mov ecx, [dev_common]
    sub ecx, [dev_bar0]
    add ecx, RAM_GPA
    cmp dword ptr [ecx], 0x5a5a5a5a
    je 1f
    xor ebx, ebx
1:  mov byte ptr [ecx + C_STATUS], 0    /* a reset, if it reached the device */
    cmp byte ptr [ecx + C_STATUS], 0
    je 2f
    xor ebx, ebx                        /* RAM keeps what was written */
2:  mov ecx, edi
    mov eax, 0x10
    call cfg_write
    mov ecx, [dev_common]
    cmp byte ptr [ecx + C_STATUS], 0xf
    je 3f
    xor ebx, ebx
    SAY "bar-over-ram: the device's status changed\n"
3:  mov eax, ebx
    pop edi
    pop ebx
    ret

    .section .rodata
prefix: .asciz "hostile-driver: "
name_console: .asciz "virtio-console "
name_blk: .asciz "virtio-blk "
name_net: .asciz "virtio-net "
alive_text: .ascii "hostile-driver: a legal request\n"
alive_text_end:
    /* The table (its names go to .rodata.names, not between entries). */
    .balign 4
attack_table:
    ATTACK "desc-loop", a_desc_loop, 1
    ATTACK "long-chain", a_long_chain, 1
    ATTACK "wrapping-len", a_wrapping_len, 1
    ATTACK "beyond-ram", a_beyond_ram, 1
    ATTACK "apic-mmio", a_apic_mmio, 1
    ATTACK "own-bar", a_own_bar, 1
    ATTACK "indirect-self", a_indirect_self, 1
    ATTACK "avail-jump", a_avail_jump, 1
    ATTACK "head-range", a_head_range, 1
    ATTACK "notify-off", a_notify_off, 0
    ATTACK "msix-range", a_msix_range, 0
    ATTACK "bar-over-ram", a_bar_over_ram, 0
attack_table_end:
net_attack_table:
    ATTACK "hdr-csum", a_hdr_csum, 0
    ATTACK "hdr-gso", a_hdr_gso, 0
    ATTACK "short-frame", a_short_frame, 0
    ATTACK "hdr-only", a_hdr_only, 0
    ATTACK "writable-tx", a_writable_tx, 0
    ATTACK "oversized", a_oversized, 0
net_attack_table_end:

    .section .data
    .balign 4
dev_kind:     .long 0                     /* 0 console, 1 blk, 2 net */
table_start:  .long attack_table
table_end:    .long attack_table_end
dev_name:     .long 0
n_attacks:    .long 0
n_contained:  .long 0
async_told:   .long 0
verdict:      .long 0
status_seen:  .long 0
