//! `splitvisor run --linux [amd64|686|686-pae]`: one of Debian's stock
//! kernels and a busybox initramfs, fetched as Debian packages into
//! `<root>/.cache/linux/` (git-ignored; nothing downloaded is committed).
//!
//! 1. `apt-get download linux-image-FLAVOUR:ARCH busybox-static:ARCH`
//!    (ARCH is amd64 or, for the 32-bit kernels, i386, which needs
//!    `dpkg --add-architecture i386` and `apt-get update`, as
//!    `scripts/install-deps` does); the metapackage's `Depends` names the
//!    versioned `linux-image-*-FLAVOUR`, which is downloaded too. Packages
//!    already in the cache are reused.
//! 2. `dpkg-deb -x` unpacks the kernel package (for `boot/vmlinuz-*`) and
//!    busybox (`bin/busybox`).
//! 3. `gcc` builds the MMU workload (`apps/linux/workload.c`, no libc) for
//!    the kernel's architecture.
//! 4. The initramfs is an uncompressed cpio (newc) archive
//!    ([`images::linux::Cpio`]): busybox, the workload, `/dev/console`,
//!    the kernel's virtio and ext4 modules ([`crate::linux_modules`]) and
//!    [`INIT`].

use std::path::{Path, PathBuf};
use std::process::Command;

use images::linux::Cpio;
use ipc_proto::manifest::Board;

use crate::linux_modules::Modules;

/// Guest RAM for Linux guests unless `--ram` says otherwise.
pub const LINUX_RAM_MIB: u32 = 256;

/// The command line `--linux` boots with (`--append` adds to it), before
/// [`tsc_option`].
///
/// `console=ttyS0` puts the kernel's console and the shell on COM1;
/// `earlyprintk=serial` shows the messages before the console driver
/// starts, which is where an unsupported device stops a boot; `panic=-1`
/// reboots at once after a panic (the i8042 reset ends the VM) instead of
/// spinning until the timeout, the panic's message still on the console.
/// `tsc=reliable` keeps the clocksource watchdog from judging the TSC by
/// jiffies: the TSC is the host's (invariant, not intercepted), while
/// jiffies here lose the ticks that fall while the kernel keeps interrupts
/// off through long console writes, each character a trapped UART access
/// costing tens of microseconds; without it the watchdog marks the TSC
/// unstable within two seconds of boot and the kernel's clock becomes
/// jiffies, which then run slow.
pub const DEFAULT_APPEND: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 tsc=reliable";

/// What `--linux` puts before the user's command line on the PC board:
/// the serial console and nothing else. The kernel finds its clocks (the
/// ACPI PM timer, the local APIC timer) and calibrates the TSC itself.
pub const PC_BOARD_APPEND: &str = "console=ttyS0";

/// `cmdline` with its `console=ttyS0` options replaced by `console`
/// (`console=hvc0` for `--console hvc0`), or `console` put first when it
/// has none.
pub fn with_console(cmdline: &str, console: &str) -> String {
    let mut replaced = false;
    let words: Vec<&str> = cmdline
        .split_whitespace()
        .map(|w| {
            if w == "console=ttyS0" || w.starts_with("console=ttyS0,") {
                replaced = true;
                console
            } else {
                w
            }
        })
        .collect();
    let s = words.join(" ");
    if replaced {
        s
    } else if s.is_empty() {
        console.to_string()
    } else {
        format!("{console} {s}")
    }
}

/// The full `--linux` command line. On the ISA board: [`DEFAULT_APPEND`],
/// `tsc_early_khz=` with the guest's TSC rate (`guest_tsc_khz`, or the
/// host's: see [`tsc_option`]) and the user's `extra`. On the PC board:
/// [`PC_BOARD_APPEND`] and `extra`.
pub fn default_append(extra: Option<&str>, guest_tsc_khz: Option<u64>, board: Board) -> String {
    let mut s = match board {
        Board::Pc => PC_BOARD_APPEND.to_string(),
        Board::Isa => DEFAULT_APPEND.to_string(),
    };
    if board == Board::Isa {
        if let Some(t) = guest_tsc_khz
            .map(|khz| format!("tsc_early_khz={khz}"))
            .or_else(tsc_option)
        {
            s = format!("{s} {t}");
        }
    }
    if let Some(e) = extra.filter(|e| !e.is_empty()) {
        s = format!("{s} {e}");
    }
    s
}

/// `tsc_early_khz=N` with the host's TSC frequency, which is the guest's
/// where the emulator reads the host TSC for RDTSC (QEMU with KVM; the
/// stub does not offset it) -- the callers pass the rate when they know
/// it: 1 GHz under QEMU's TCG with its instruction clock
/// ([`crate::run::QEMU_TSC_KHZ`]), Bochs's own ([`crate::bochs::TSC_KHZ`]).
/// On the ISA board it is needed because the guest has no clock to
/// calibrate the TSC against that it can read fast enough: Linux's PIT calibration needs thousands of
/// port reads in 10 ms (each one is a VM exit costing tens to hundreds of
/// microseconds here), and there is no HPET or ACPI PM timer. Without it
/// the TSC is marked unstable and `calibrate_delay` spins on `jiffies`
/// without an exit, so the PIT tick never comes and the boot stops.
pub fn tsc_option() -> Option<String> {
    host_tsc_khz().map(|khz| format!("tsc_early_khz={khz}"))
}

/// The host's TSC frequency in kHz, measured over 100 ms.
#[cfg(target_arch = "x86_64")]
pub fn host_tsc_khz() -> Option<u64> {
    #[allow(unused_unsafe)]
    // SAFETY: RDTSC has no preconditions on x86-64.
    let rdtsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let t0 = std::time::Instant::now();
    let c0 = rdtsc();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let c1 = rdtsc();
    let secs = t0.elapsed().as_secs_f64();
    #[allow(
        clippy::cast_sign_loss,
        reason = "ticks over elapsed time are not negative (and `as` saturates at 0)"
    )]
    let khz = (c1.wrapping_sub(c0) as f64 / secs / 1000.0) as u64;
    (khz > 1000).then_some(khz)
}

/// The host's TSC frequency (none off x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub fn host_tsc_khz() -> Option<u64> {
    None
}

/// Which of Debian's kernels `--linux` boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// `linux-image-amd64`: x86-64, four-level paging.
    Amd64,
    /// `linux-image-686`: i386 with two-level (non-PAE) paging.
    #[value(name = "686")]
    I686,
    /// `linux-image-686-pae`: i386 with PAE paging.
    #[value(name = "686-pae")]
    I686Pae,
}

impl Flavour {
    /// All flavours, 64-bit first.
    pub const ALL: [Flavour; 3] = [Flavour::Amd64, Flavour::I686, Flavour::I686Pae];

    /// The name `--linux` takes (and Debian's flavour name).
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Amd64 => "amd64",
            Flavour::I686 => "686",
            Flavour::I686Pae => "686-pae",
        }
    }

    /// Debian's architecture of the packages.
    pub fn debian_arch(self) -> &'static str {
        match self {
            Flavour::Amd64 => "amd64",
            Flavour::I686 | Flavour::I686Pae => "i386",
        }
    }

    fn metapackage(self) -> String {
        format!("linux-image-{}", self.name())
    }

    /// What `uname -m` prints in this kernel.
    pub fn machine(self) -> &'static str {
        match self {
            Flavour::Amd64 => "x86_64",
            Flavour::I686 | Flavour::I686Pae => "i686",
        }
    }
}

/// The marker `/init` prints once it runs.
pub const INIT_MARKER: &str = "splitvisor-linux: init started";

/// The line `/init` prints after the workload, with its exit status (the
/// number of parts that failed).
pub const WORKLOAD_END: &str = "splitvisor-linux: workload exit status ";

/// The line `/init` prints for a module `insmod` could not load, before
/// the module's file name.
pub const MODULE_FAILED: &str = "splitvisor-linux: could not load module ";

/// With `splitvisor.disk=write` and `update`: the line after the disk
/// check wrote its files, before the MD5 of the random one.
pub const DISK_WRITTEN: &str = "splitvisor-linux: disk written, md5 ";

/// With `splitvisor.disk=read`, `readonly` and `update`: the lines around
/// the text file's content.
pub const DISK_CONTENT_BEGIN: &str = "splitvisor-linux: disk content begin";
/// See [`DISK_CONTENT_BEGIN`].
pub const DISK_CONTENT_END: &str = "splitvisor-linux: disk content end";

/// With `splitvisor.disk=read`, `readonly` and `update`: the line before
/// the MD5 of the random file read back.
pub const DISK_READ: &str = "splitvisor-linux: disk read, md5 ";

/// With `splitvisor.rng`: the start of the line after each read of
/// `/dev/hwrng` (`rng: CURRENT N bytes, md5 HEX`; `rng failed: ...` if
/// the read failed).
pub const RNG_LINE: &str = "splitvisor-linux: rng: ";
/// The text `splitvisor.disk=write` writes to `/splitvisor-disk-check.txt`
/// on the disk (one line).
pub const DISK_TEXT: &str = "splitvisor disk check: written by the first boot";

/// The text `splitvisor.disk=update` writes to
/// `/splitvisor-disk-guest.txt` on the disk (one line).
pub const DISK_GUEST_TEXT: &str = "splitvisor disk check: written by the guest";

/// With `splitvisor.disk=readonly` (a disk attached `,ro`): after the
/// read check, `/init` writes one block straight to `/dev/vda` with `dd`
/// and prints this line, then `refused: ` and dd's message or `succeeded`.
pub const DISK_RAW_WRITE: &str = "splitvisor-linux: raw write to /dev/vda ";

/// With `splitvisor.disk=bench`: `IO_BEGIN NAME` before each part and
/// `IO_LINE NAME BYTES START END` after it, the
/// guest's uptime in seconds before and after moving BYTES (`seq-write`:
/// 16 MiB in 64 KiB blocks with `conv=fsync`; `seq-read`: the same back,
/// caches dropped; `rand-read-4k`: 200 single-block `dd` reads at
/// scattered offsets, read-ahead off).
pub const IO_LINE: &str = "splitvisor-linux: io ";
/// See [`IO_LINE`].
pub const IO_BEGIN: &str = "splitvisor-linux: io-begin ";

/// With `splitvisor.net`: `eth0`'s address and counters after this.
pub const NET_LINE: &str = "splitvisor-linux: net: ";
/// With `splitvisor.net`: a failure (no lease, a page not fetched).
pub const NET_FAILED: &str = "splitvisor-linux: net failed: ";
/// With `splitvisor.net.url=URL`: the lines around the page fetched.
pub const NET_PAGE_BEGIN: &str = "splitvisor-linux: net page begin";
/// See [`NET_PAGE_BEGIN`].
pub const NET_PAGE_END: &str = "splitvisor-linux: net page end";
/// With `splitvisor.net.bench=URL`: the bytes fetched, the guest's uptime
/// before and after, and their MD5. With `splitvisor.net.bench.pair`:
/// `ping-begin;`, `ping SENT RECEIVED MIN/AVG/MAX;` (ms), `tcp-begin;`,
/// `tcp-sent BYTES UPTIME0 UPTIME1 MD5;` from VM 0 and `tcp-received
/// BYTES UPTIME MD5;` from VM 1.
pub const NET_BENCH: &str = "splitvisor-linux: net bench ";

/// Either disk check's line when it fails, before the reason.
pub const DISK_FAILED: &str = "splitvisor-linux: disk check failed: ";

/// With `console=hvc0`: the line before `/init` copies the kernel's log so
/// far (`dmesg`) to hvc0. virtio_console registers the console before it
/// can write to the port (`hvc_alloc` before the port is on the driver's
/// console list: `put_chars` fails with `-EPIPE` and `hvc_console_print`
/// throws the characters away), so the kernel's replay of its log to a
/// console that registers late is lost; what the kernel prints after it
/// reaches hvc0 itself.
pub const HVC_LOG_BEGIN: &str = "splitvisor-linux: the kernel's log before hvc0";
/// See [`HVC_LOG_BEGIN`].
pub const HVC_LOG_END: &str = "splitvisor-linux: end of the kernel's log before hvc0";

/// The initramfs's `/init`: mounts proc, sys and devtmpfs, loads the
/// kernel modules the initramfs carries (listed in load order in
/// `/lib/modules/$(uname -r)/splitvisor.modules`, see
/// [`crate::linux_modules`]; quietly, a module that fails prints
/// [`MODULE_FAILED`] and its name) so that `/dev/vda` and `/dev/hvc0` appear
/// when the machine has virtio-blk and virtio-console devices; with
/// `console=hvc0` on the command line it waits (5 s at most) for
/// `/dev/hvc0` and, if hvc0 is then the console `/dev/console` opens (the
/// last `console=`: `C` in `/proc/consoles`), reopens it for its own
/// output and copies the kernel's log so far there (between
/// [`HVC_LOG_BEGIN`] and [`HVC_LOG_END`]); prints the marker and
/// `uname -a`, then hands over to busybox `init` ([`INITTAB`]: a shell on
/// ttyS0; `poweroff`, `halt` and `reboot` end the VM with status 0). With `splitvisor.workload` on the kernel command line it first runs
/// `/bin/workload` (fork+exec, pipe ping-pong, mmap/munmap; see
/// `apps/linux/workload.c`) and prints [`WORKLOAD_END`]; with
/// `splitvisor.platform` it prints `/proc/interrupts` and the clock source;
/// with `splitvisor.rng` it waits (5 s at most) for the virtio entropy
/// device to be the hardware RNG and reads 4096 bytes from `/dev/hwrng`
/// twice, printing [`RNG_LINE`] `virtio_rng.0 4096 bytes, md5 ...` for each;
/// with `splitvisor.net` it brings `eth0` up by DHCP (busybox `udhcpc`)
/// and prints [`NET_LINE`] `eth0 MAC address IP router IP by dhcp` (or
/// [`NET_FAILED`]), then for each `splitvisor.net.oversize` sends two
/// pings of 3042-byte frames with the MTU raised to 4000 (frames the
/// device drops) and for each `splitvisor.net.url=URL` fetches URL with
/// busybox `wget` and prints it between [`NET_PAGE_BEGIN`] and
/// [`NET_PAGE_END`], for each `splitvisor.net.bench=URL` fetches URL
/// into `/tmp` and prints [`NET_BENCH`] `BYTES UPTIME0 UPTIME1 md5 MD5`,
/// and last `eth0`'s packet counts;
/// with `splitvisor.net.pair` (two VMs on one switch, `--vms 2 --net
/// switch`) it gives `eth0` the static address 10.0.3.N, N the last byte
/// of its station address (VM 0: 1, VM 1: 2); 10.0.3.1 pings 10.0.3.2
/// three times, sends it two frames of 3042 bytes (MTU 4000) and a flood
/// of 200 pings of 1442-byte frames 2 ms apart, then sends it 64 KiB
/// from `/dev/urandom` with busybox
/// `nc` (port 5000) and prints the file's MD5, 10.0.3.2 receives it and
/// prints its MD5 ([`NET_LINE`] lines);
/// with `splitvisor.net.bench.pair` (`splitvisor bench net`) the same
/// addresses; 10.0.3.1 waits until 10.0.3.2 answers a ping, pings it 20
/// times 0.2 s apart, then sends it `splitvisor.net.bench.mib=N` MiB (1
/// unless given) from `/dev/urandom` with busybox `nc` (port 5001), and
/// 10.0.3.2 receives them; the [`NET_BENCH`] lines (each ending in `;`)
/// give the pings' summary, the guest's uptime around the send, the bytes
/// and MD5s;
/// with `splitvisor.disk=write` it mounts `/dev/vda` (ext4) at `/mnt`, writes
/// [`DISK_TEXT`] to `splitvisor-disk-check.txt` and 4 MiB from
/// `/dev/urandom` to `splitvisor-disk-check.bin`, syncs, unmounts, prints
/// [`DISK_WRITTEN`] with the MD5 of the random file and ends the VM; with
/// `splitvisor.disk=read` it mounts it read-only, prints the text file
/// between [`DISK_CONTENT_BEGIN`] and [`DISK_CONTENT_END`] and
/// [`DISK_READ`] with the random file's MD5, and ends the VM (a failure:
/// [`DISK_FAILED`] and the reason, and the VM ends too);
/// `splitvisor.disk=readonly` does the same read check and then tries to
/// write a block to `/dev/vda` ([`DISK_RAW_WRITE`]);
/// `splitvisor.disk=update` mounts it read-write, does the same read
/// check, writes [`DISK_GUEST_TEXT`] to `splitvisor-disk-guest.txt` and
/// 1 MiB from `/dev/urandom` to `splitvisor-disk-guest.bin`, syncs,
/// prints [`DISK_WRITTEN`] with that file's MD5, unmounts and ends the VM
/// (one boot, both directions: the host made the files it reads and
/// checks the ones it writes);
/// `splitvisor.disk=bench` (a scratch disk of 64 MiB at least: it is
/// overwritten) times sequential writes and reads and 4 KiB random reads
/// on `/dev/vda` and prints [`IO_LINE`] lines (`splitvisor bench io`); with
/// `splitvisor.exit` it ends the VM with status 0 instead of starting the
/// shell, for tests and benchmarks.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mods=/lib/modules/$(uname -r)
if [ -f $mods/splitvisor.modules ]; then
    for m in $(cat $mods/splitvisor.modules); do
        insmod $mods/$m 2>/dev/null || echo "splitvisor-linux: could not load module ${m##*/}"
    done
fi
case " $(cat /proc/cmdline) " in
*" console=hvc0 "*)
    i=0
    while [ ! -e /dev/hvc0 ] && [ $i -lt 50 ]; do
        usleep 100000
        i=$((i + 1))
    done
    if [ ! -e /dev/hvc0 ]; then
        echo "splitvisor-linux: console=hvc0 but no /dev/hvc0"
    elif grep -q '^hvc0 .*(EC' /proc/consoles; then
        exec </dev/console >/dev/console 2>&1
        echo "splitvisor-linux: the kernel's log before hvc0"
        dmesg
        echo "splitvisor-linux: end of the kernel's log before hvc0"
    fi
    ;;
esac
echo "splitvisor-linux: init started"
uname -a
case " $(cat /proc/cmdline) " in
*" splitvisor.workload "*)
    /bin/workload
    echo "splitvisor-linux: workload exit status $?"
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.platform "*)
    echo "splitvisor-linux: /proc/interrupts"
    cat /proc/interrupts
    echo "splitvisor-linux: clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.rng "*)
    i=0
    while [ "$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)" != virtio_rng.0 ] && [ $i -lt 50 ]; do
        usleep 100000
        i=$((i + 1))
    done
    rng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
    for pass in 1 2; do
        if head -c 4096 /dev/hwrng >/tmp/rng; then
            set -- $(md5sum /tmp/rng)
            echo "splitvisor-linux: rng: $rng $(wc -c </tmp/rng) bytes, md5 $1"
        else
            echo "splitvisor-linux: rng failed: cannot read /dev/hwrng (current: $rng)"
        fi
    done
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.net "*)
    cat >/tmp/udhcpc.sh <<'END'
#!/bin/sh
case "$1" in
deconfig) ifconfig $interface 0.0.0.0 up ;;
bound|renew)
    ifconfig $interface $ip netmask ${subnet:-255.255.255.0} up
    [ -n "$router" ] && route add default gw ${router%% *} dev $interface
    echo "$ip ${router%% *}" >/tmp/lease
    ;;
esac
END
    chmod +x /tmp/udhcpc.sh
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
        usleep 100000
        i=$((i + 1))
    done
    ifconfig lo 127.0.0.1 up
    if udhcpc -i eth0 -n -q -t 5 -T 2 -s /tmp/udhcpc.sh >/dev/null 2>&1 && [ -f /tmp/lease ]; then
        set -- $(cat /tmp/lease)
        echo "splitvisor-linux: net: eth0 $(cat /sys/class/net/eth0/address) address $1 router ${2:-none} by dhcp"
    else
        echo "splitvisor-linux: net failed: no DHCP lease on eth0"
    fi
    for a in $(cat /proc/cmdline); do
        case $a in
        splitvisor.net.oversize)
            # No echo comes back: ping is not waited for (an idle guest
            # second costs about ten of QEMU's under TCG).
            ip link set eth0 mtu 4000
            ping -c 2 -i 0.05 -s 3000 ${2:-10.0.2.2} >/dev/null 2>&1 &
            usleep 300000
            kill $! 2>/dev/null
            ip link set eth0 mtu 1500
            echo "splitvisor-linux: net: sent 2 frames of 3042 bytes"
            ;;
        splitvisor.net.bench=*)
            read t0 _ </proc/uptime
            timeout 600 wget -q -O /tmp/bench "${a#splitvisor.net.bench=}"
            read t1 _ </proc/uptime
            md5=$(md5sum /tmp/bench)
            echo "splitvisor-linux: net bench $(wc -c </tmp/bench) $t0 $t1 md5 ${md5%% *}"
            rm -f /tmp/bench
            ;;
        splitvisor.net.url=*)
            # (busybox 1.35's wget -T crashes: timeout instead)
            if timeout 60 wget -q -O /tmp/page "${a#splitvisor.net.url=}"; then
                echo "splitvisor-linux: net page begin"
                cat /tmp/page
                echo "splitvisor-linux: net page end"
            else
                echo "splitvisor-linux: net failed: cannot fetch ${a#splitvisor.net.url=}"
            fi
            ;;
        esac
    done
    s=/sys/class/net/eth0/statistics
    echo "splitvisor-linux: net: eth0 tx_packets $(cat $s/tx_packets) rx_packets $(cat $s/rx_packets) rx_length_errors $(cat $s/rx_length_errors)"
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.net.pair "*)
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
        usleep 100000
        i=$((i + 1))
    done
    mac=$(cat /sys/class/net/eth0/address)
    n=$((0x${mac##*:}))
    ifconfig lo 127.0.0.1 up
    ifconfig eth0 10.0.3.$n netmask 255.255.255.0 up
    echo "splitvisor-linux: net: eth0 $mac address 10.0.3.$n static"
    if [ $n = 1 ]; then
        ping -c 3 -i 0.2 -w 30 10.0.3.2 >/tmp/ping 2>&1
        echo "splitvisor-linux: net: ping 10.0.3.2: $(grep 'packets transmitted' /tmp/ping)"
        # Bad input for the other VM: two frames of 3042 bytes (its own
        # virtio-net server drops them), then a flood of 200 echo
        # requests of 1442-byte frames 2 ms apart.
        ip link set eth0 mtu 4000
        ping -c 2 -i 0.05 -s 3000 10.0.3.2 >/dev/null 2>&1 &
        usleep 300000
        kill $! 2>/dev/null
        ip link set eth0 mtu 1500
        echo "splitvisor-linux: net: sent 2 frames of 3042 bytes"
        ping -c 200 -i 0.002 -s 1400 -w 30 10.0.3.2 >/tmp/ping 2>&1
        echo "splitvisor-linux: net: flood 10.0.3.2: $(grep 'packets transmitted' /tmp/ping)"
        dd if=/dev/urandom of=/tmp/send bs=1024 count=64 2>/dev/null
        i=0
        until timeout 60 nc 10.0.3.2 5000 </tmp/send || [ $i -ge 10 ]; do
            i=$((i + 1))
            sleep 1
        done
        set -- $(md5sum /tmp/send)
        echo "splitvisor-linux: net: sent $(wc -c </tmp/send) bytes to 10.0.3.2, md5 $1"
    else
        timeout 120 nc -l -p 5000 >/tmp/recv
        set -- $(md5sum /tmp/recv)
        echo "splitvisor-linux: net: received $(wc -c </tmp/recv) bytes, md5 $1"
    fi
    s=/sys/class/net/eth0/statistics
    echo "splitvisor-linux: net: eth0 tx_packets $(cat $s/tx_packets) rx_packets $(cat $s/rx_packets)"
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.net.bench.pair "*)
    # `splitvisor bench net`: every line ends with `;` so that the host
    # finds its end even when another VM's output cut it.
    mib=1
    for a in $(cat /proc/cmdline); do
        case $a in splitvisor.net.bench.mib=*) mib=${a#splitvisor.net.bench.mib=} ;; esac
    done
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
        usleep 100000
        i=$((i + 1))
    done
    mac=$(cat /sys/class/net/eth0/address)
    n=$((0x${mac##*:}))
    ifconfig lo 127.0.0.1 up
    ifconfig eth0 10.0.3.$n netmask 255.255.255.0 up
    echo "splitvisor-linux: net: eth0 $mac address 10.0.3.$n static"
    if [ $n = 1 ]; then
        # The other VM may boot later (plain QEMU: another process): no
        # guest-time limit, the host's timeout ends a run that hangs.
        until ping -c 1 -W 1 10.0.3.2 >/dev/null 2>&1; do :; done
        dd if=/dev/urandom of=/tmp/send bs=1048576 count=$mib 2>/dev/null
        set -- $(md5sum /tmp/send)
        md5=$1
        echo "splitvisor-linux: net bench ping-begin;"
        ping -c 20 -i 0.2 -w 120 10.0.3.2 >/tmp/ping 2>&1
        got=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)
        rtt=$(sed -n 's/.*min\/avg\/max = \([^ ]*\) ms.*/\1/p' /tmp/ping)
        echo "splitvisor-linux: net bench ping 20 ${got:-0} ${rtt:-none};"
        echo "splitvisor-linux: net bench tcp-begin;"
        read t0 _ </proc/uptime
        # Again while refused (1: not listening yet); a send that hangs
        # (the other VM gone before its FIN got through) is cut off.
        i=0
        while :; do
            timeout 300 nc 10.0.3.2 5001 </tmp/send
            [ $? = 1 ] && [ $i -lt 100 ] || break
            i=$((i + 1))
            usleep 100000
        done
        read t1 _ </proc/uptime
        echo "splitvisor-linux: net bench tcp-sent $(wc -c </tmp/send) $t0 $t1 $md5;"
    else
        nc -l -p 5001 >/tmp/recv
        read t1 _ </proc/uptime
        set -- $(md5sum /tmp/recv)
        echo "splitvisor-linux: net bench tcp-received $(wc -c </tmp/recv) $t1 $1;"
        # Time for the connection's last frames (a FIN dropped at a full
        # queue is sent again) before this VM powers off.
        sleep 3
    fi
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.disk=write "*)
    mkdir -p /mnt
    if mount -t ext4 /dev/vda /mnt; then
        echo "splitvisor disk check: written by the first boot" >/mnt/splitvisor-disk-check.txt
        dd if=/dev/urandom of=/mnt/splitvisor-disk-check.bin bs=65536 count=64 2>/dev/null
        set -- $(md5sum /mnt/splitvisor-disk-check.bin)
        sync
        umount /mnt
        echo "splitvisor-linux: disk written, md5 $1"
    else
        echo "splitvisor-linux: disk check failed: cannot mount /dev/vda as ext4"
    fi
    /sbin/splitvisor-exit
    ;;
*" splitvisor.disk=bench "*)
    up() { read u _ </proc/uptime; echo $u; }
    blockdev --setra 0 /dev/vda 2>/dev/null
    echo "splitvisor-linux: io-begin seq-write"
    a=$(up); dd if=/dev/zero of=/dev/vda bs=65536 count=256 conv=fsync 2>/dev/null; b=$(up)
    echo "splitvisor-linux: io seq-write 16777216 $a $b"
    echo 3 >/proc/sys/vm/drop_caches
    echo "splitvisor-linux: io-begin seq-read"
    a=$(up); dd if=/dev/vda of=/dev/null bs=65536 count=256 2>/dev/null; b=$(up)
    echo "splitvisor-linux: io seq-read 16777216 $a $b"
    echo 3 >/proc/sys/vm/drop_caches
    echo "splitvisor-linux: io-begin rand-read-4k"
    a=$(up); i=0
    while [ $i -lt 200 ]; do
        dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=$(( (i * 7919) % 16384 )) 2>/dev/null
        i=$((i + 1))
    done
    b=$(up)
    echo "splitvisor-linux: io rand-read-4k 819200 $a $b"
    /sbin/splitvisor-exit
    ;;
*" splitvisor.disk=read "*|*" splitvisor.disk=readonly "*|*" splitvisor.disk=update "*)
    mkdir -p /mnt
    case " $(cat /proc/cmdline) " in
    *" splitvisor.disk=update "*) how=rw ;;
    *) how=ro ;;
    esac
    if mount -t ext4 -o $how /dev/vda /mnt; then
        echo "splitvisor-linux: disk content begin"
        cat /mnt/splitvisor-disk-check.txt
        echo "splitvisor-linux: disk content end"
        set -- $(md5sum /mnt/splitvisor-disk-check.bin)
        echo "splitvisor-linux: disk read, md5 $1"
        if [ $how = rw ]; then
            echo "splitvisor disk check: written by the guest" >/mnt/splitvisor-disk-guest.txt
            dd if=/dev/urandom of=/mnt/splitvisor-disk-guest.bin bs=65536 count=16 2>/dev/null
            set -- $(md5sum /mnt/splitvisor-disk-guest.bin)
            sync
            echo "splitvisor-linux: disk written, md5 $1"
        fi
        umount /mnt
    else
        echo "splitvisor-linux: disk check failed: cannot mount /dev/vda as ext4"
    fi
    case " $(cat /proc/cmdline) " in
    *" splitvisor.disk=readonly "*)
        if err=$(dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>&1); then
            echo "splitvisor-linux: raw write to /dev/vda succeeded"
        else
            echo "splitvisor-linux: raw write to /dev/vda refused: $(echo "$err" | head -n 1)"
        fi
        ;;
    esac
    /sbin/splitvisor-exit
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.exit "*)
    /sbin/splitvisor-exit
    ;;
esac
echo "splitvisor-linux: starting a shell on ttyS0 (poweroff ends the VM)"
exec /bin/busybox init
"#;

/// busybox init's table: a shell on the console (cttyhack makes it the
/// controlling terminal, ttyS0), and the VM's end on shutdown.
pub const INITTAB: &str = "ttyS0::respawn:-/bin/sh
::shutdown:/sbin/splitvisor-exit
";

/// Ends the VM with status 0: with ACPI (the PC board) by powering off
/// (the kernel enters S5 through the FADT's PM1a control block), else by
/// the byte 0 to the debug-exit port 0xF4, through `/dev/port`.
pub const EXIT_SCRIPT: &str = "#!/bin/sh
if [ -e /sys/firmware/acpi/tables/FACP ]; then
    echo 'splitvisor-linux: powering off through ACPI'
    poweroff -f
fi
echo 'splitvisor-linux: exiting through port 0xf4'
printf '\\000' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
";

/// The kernel and initramfs `--linux` boots.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    /// Debian's bzImage.
    pub kernel: PathBuf,
    /// The busybox initramfs.
    pub initrd: PathBuf,
    /// The Debian packages it came from, with their versions
    /// ([`describe_packages`]), for the benchmarks to name.
    pub packages: String,
}

/// Names a Debian kernel package to boot instead of the one the
/// flavour's metapackage depends on today: `NAME` or `NAME=VERSION`, e.g.
/// `linux-image-6.1.0-57-amd64=6.1.158-1`. Debian's kernel moves under
/// the metapackage's fixed name; with this a benchmark runs again on the
/// kernel its figures name.
pub const KERNEL_PACKAGE_ENV: &str = "SPLITVISOR_KERNEL_PACKAGE";

/// A package name and, optionally, its exact version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackagePin {
    /// The package, `linux-image-...`.
    pub name: String,
    /// Its Debian version, or the newest apt knows (or the cache holds).
    pub version: Option<String>,
}

impl PackagePin {
    /// `NAME` or `NAME=VERSION`; a name must be a `linux-image-*` package.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, version) = match s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        let ok_chars = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.:~_".contains(c))
        };
        if !name.starts_with("linux-image-") || !ok_chars(name) || !version.is_none_or(ok_chars) {
            return Err(format!(
                "{KERNEL_PACKAGE_ENV}={s:?}: expected a Debian kernel package as \
                 linux-image-NAME or linux-image-NAME=VERSION"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            version: version.map(str::to_string),
        })
    }

    /// The pin [`KERNEL_PACKAGE_ENV`] sets, if any.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(KERNEL_PACKAGE_ENV) {
            Ok(s) if !s.trim().is_empty() => Self::parse(&s).map(Some),
            _ => Ok(None),
        }
    }
}

/// `<root>/.cache/linux`.
pub fn cache_dir() -> PathBuf {
    images::workspace_root().join(".cache").join("linux")
}

/// The cached `.deb` of `package` for Debian architecture `arch`,
/// downloading it if it is not there.
pub(crate) fn fetch_deb(dir: &Path, package: &str, arch: &str) -> Result<PathBuf, String> {
    fetch_deb_version(dir, package, None, arch)
}

/// [`fetch_deb`] of exactly `version`, when given.
fn fetch_deb_version(
    dir: &Path,
    package: &str,
    version: Option<&str>,
    arch: &str,
) -> Result<PathBuf, String> {
    // A file name holds the version with its epoch's colon as %3a.
    let infix = version.map_or(String::new(), |v| format!("{}_", v.replace(':', "%3a")));
    let find = || -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{package}_{infix}"))
                        && n.ends_with(&format!("_{arch}.deb"))
                })
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let spec = match version {
        Some(v) => format!("{package}:{arch}={v}"),
        None => format!("{package}:{arch}"),
    };
    eprintln!("splitvisor: downloading the Debian package {spec} (apt-get download)");
    let start = std::time::Instant::now();
    crate::progress::run_showing(
        Command::new("apt-get")
            .args(["download", &spec])
            .current_dir(dir),
        &format!("apt-get download {spec}"),
    )
    .map_err(|e| {
        let hint = if version.is_some() {
            format!(
                "apt offers only the versions its sources list (`apt-cache policy {package}`); \
                 a .deb of another version placed in {} is used as it is",
                dir.display()
            )
        } else if arch == "amd64" {
            "run `apt-get update` (scripts/install-deps does)".to_string()
        } else {
            "the i386 packages need `dpkg --add-architecture i386 && apt-get update` \
             (scripts/install-deps does both)"
                .to_string()
        };
        format!("could not download the Debian package {spec}: {e}; {hint}")
    })?;
    let deb = find().ok_or_else(|| {
        format!(
            "apt-get download {package} left no {package}_*.deb in {}",
            dir.display()
        )
    })?;
    let mib = std::fs::metadata(&deb).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0));
    eprintln!(
        "splitvisor: downloaded {} ({mib:.1} MiB) in {:.1} s",
        deb.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(deb)
}

/// `deb`'s `Version` field.
fn deb_version(deb: &Path) -> Result<String, String> {
    let v = crate::progress::run_captured(
        Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"),
        "dpkg-deb -f",
    )?;
    Ok(v.trim().to_string())
}

/// One line naming the packages a guest came from: the kernel package
/// and its version, the metapackage that chose it (or that it was
/// pinned), and busybox-static's.
pub fn describe_packages(
    kernel: (&str, &str),
    chosen_by: Option<(&str, &str)>,
    busybox: &str,
) -> String {
    let how = match chosen_by {
        Some((meta, v)) => format!("the dependency of {meta} {v}"),
        None => format!("pinned by {KERNEL_PACKAGE_ENV}"),
    };
    format!(
        "{} {} ({how}), busybox-static {busybox}",
        kernel.0, kernel.1
    )
}

/// The versioned kernel package the metapackage depends on.
fn kernel_package(meta: &Path) -> Result<String, String> {
    let depends = crate::progress::run_captured(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(meta)
            .arg("Depends"),
        "dpkg-deb -f",
    )?;
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| format!("{} depends on no linux-image-* package", meta.display()))
}

pub(crate) fn unpack(deb: &Path, into: &Path) -> Result<(), String> {
    let stamp = into.join(".unpacked");
    if stamp.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(into).map_err(|e| format!("{}: {e}", into.display()))?;
    crate::progress::run_captured(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(into),
        &format!("dpkg-deb -x {}", deb.display()),
    )?;
    std::fs::write(&stamp, b"").map_err(|e| format!("{}: {e}", stamp.display()))
}

/// The initramfs: busybox, `/bin/workload`, `/dev/console`, `/init`,
/// `/etc/inittab` and `/sbin/splitvisor-exit`, without kernel modules.
pub fn initramfs(busybox: &[u8], workload: &[u8]) -> Vec<u8> {
    initramfs_with_modules(busybox, workload, &Modules::default())
}

/// [`initramfs`] with `modules` under `lib/modules/VERSION/` (each
/// directory on their paths, `modules.dep` and the load list `/init`
/// reads: [`crate::linux_modules::LOAD_LIST`]); none when `modules` has no
/// files.
pub fn initramfs_with_modules(busybox: &[u8], workload: &[u8], modules: &Modules) -> Vec<u8> {
    let mut c = Cpio::new();
    for d in [
        "bin", "dev", "etc", "proc", "sys", "tmp", "sbin", "usr", "usr/bin", "usr/sbin", "mnt",
    ] {
        c.dir(d);
    }
    if !modules.files.is_empty() {
        let base = format!("lib/modules/{}", modules.version);
        let mut dirs = std::collections::BTreeSet::new();
        let mut add_dirs = |c: &mut Cpio, path: &str| {
            let mut at = 0;
            while let Some(i) = path[at..].find('/') {
                let d = &path[..at + i];
                if dirs.insert(d.to_string()) {
                    c.dir(d);
                }
                at += i + 1;
            }
        };
        add_dirs(&mut c, &format!("{base}/"));
        for (rel, data) in &modules.files {
            let p = format!("{base}/{rel}");
            add_dirs(&mut c, &p);
            c.file(&p, 0o644, data);
        }
        c.file(
            &format!("{base}/modules.dep"),
            0o644,
            modules.modules_dep.as_bytes(),
        );
        c.file(
            &format!("{base}/{}", crate::linux_modules::LOAD_LIST),
            0o644,
            modules.load_list().as_bytes(),
        );
    }
    c.chardev("dev/console", 5, 1);
    c.file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    c.file("bin/workload", 0o755, workload);
    c.file("init", 0o755, INIT.as_bytes());
    c.file("etc/inittab", 0o644, INITTAB.as_bytes());
    c.file("sbin/splitvisor-exit", 0o755, EXIT_SCRIPT.as_bytes());
    c.finish()
}

/// The source of `/bin/workload`.
pub const WORKLOAD_C: &str = include_str!("../linux/workload.c");

/// Builds the workload for `flavour`'s architecture with the host's gcc
/// into `dir`.
fn build_workload(dir: &Path, flavour: Flavour) -> Result<Vec<u8>, String> {
    let arch = flavour.debian_arch();
    let src = dir.join("workload.c");
    let out = dir.join(format!("workload-{arch}"));
    images::write_atomic(&src, WORKLOAD_C.as_bytes()).map_err(|e| e.to_string())?;
    let bits = if arch == "i386" { "-m32" } else { "-m64" };
    crate::progress::run_captured(
        Command::new("gcc")
            .args([bits, "-static", "-nostdlib", "-ffreestanding"])
            .args(["-fno-pie", "-no-pie", "-O2", "-o"])
            .arg(&out)
            .arg(&src),
        &format!("gcc {bits} (building the {arch} workload)"),
    )?;
    std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))
}

/// Fetches (or finds in the cache) Debian's `flavour` kernel and busybox,
/// builds the workload and writes the initramfs.
pub fn prepare_debian_linux(flavour: Flavour) -> Result<LinuxGuest, String> {
    let dir = cache_dir();
    let arch = flavour.debian_arch();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (kpkg, kdeb, meta) = match PackagePin::from_env()? {
        Some(pin) => {
            let kdeb = fetch_deb_version(&dir, &pin.name, pin.version.as_deref(), arch)?;
            (pin.name, kdeb, None)
        }
        None => {
            let meta_name = flavour.metapackage();
            let meta = fetch_deb(&dir, &meta_name, arch)?;
            let kpkg = kernel_package(&meta)?;
            let kdeb = fetch_deb(&dir, &kpkg, arch)?;
            (kpkg, kdeb, Some((meta_name, deb_version(&meta)?)))
        }
    };
    let bdeb = fetch_deb(&dir, "busybox-static", arch)?;
    let packages = describe_packages(
        (&kpkg, &deb_version(&kdeb)?),
        meta.as_ref().map(|(n, v)| (n.as_str(), v.as_str())),
        &deb_version(&bdeb)?,
    );
    let kroot = dir.join(format!("root-{kpkg}"));
    let broot = dir.join(format!("root-busybox-static-{arch}"));
    unpack(&kdeb, &kroot)?;
    unpack(&bdeb, &broot)?;
    let boot = kroot.join("boot");
    let kernel = std::fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("the package {kpkg} has no boot/vmlinuz-*"))?;
    let bb = broot.join("bin").join("busybox");
    let busybox = std::fs::read(&bb)
        .map_err(|e| format!("busybox-static has no bin/busybox ({}: {e})", bb.display()))?;
    let workload = build_workload(&dir, flavour)?;
    let modules = crate::linux_modules::collect(&kroot)?;
    // One per flavour (the modules are the kernel's own: 686 and 686-pae
    // share busybox and the workload, not their modules) and per content:
    // the cache is shared by every checkout of the project on the machine,
    // and a run must boot its own `/init`, not one another checkout wrote
    // in between.
    let bytes = initramfs_with_modules(&busybox, &workload, &modules);
    let mut hash = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&bytes, &mut hash);
    let initrd = dir.join(format!(
        "initramfs-{}-{:016x}.cpio",
        flavour.name(),
        std::hash::Hasher::finish(&hash)
    ));
    if !initrd.exists() {
        images::write_atomic(&initrd, &bytes).map_err(|e| e.to_string())?;
    }
    Ok(LinuxGuest {
        kernel,
        initrd,
        packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_pins_parse_or_say_what_is_expected() {
        assert_eq!(
            PackagePin::parse("linux-image-6.1.0-57-amd64=6.1.158-1").unwrap(),
            PackagePin {
                name: "linux-image-6.1.0-57-amd64".into(),
                version: Some("6.1.158-1".into()),
            }
        );
        assert_eq!(
            PackagePin::parse("linux-image-6.1.0-57-686-pae")
                .unwrap()
                .version,
            None
        );
        for bad in [
            "busybox-static",
            "linux-image-x=",
            "linux-image-x=1 2",
            "",
            "linux-image-$(id)",
        ] {
            let e = PackagePin::parse(bad).unwrap_err();
            assert!(e.contains("linux-image-NAME=VERSION"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_package_line_names_versions_and_how_the_kernel_was_chosen() {
        assert_eq!(
            describe_packages(
                ("linux-image-6.1.0-57-amd64", "6.1.158-1"),
                Some(("linux-image-amd64", "6.1.158-1")),
                "1:1.35.0-4+b3"
            ),
            "linux-image-6.1.0-57-amd64 6.1.158-1 (the dependency of linux-image-amd64 \
             6.1.158-1), busybox-static 1:1.35.0-4+b3"
        );
        assert!(describe_packages(("k", "1"), None, "2")
            .contains("pinned by SPLITVISOR_KERNEL_PACKAGE"));
    }

    #[test]
    fn the_console_option_is_replaced_or_put_first() {
        assert_eq!(
            with_console("console=ttyS0 splitvisor.exit", "console=hvc0"),
            "console=hvc0 splitvisor.exit"
        );
        assert_eq!(
            with_console("quiet console=ttyS0,115200", "console=hvc0"),
            "quiet console=hvc0"
        );
        assert_eq!(with_console("quiet", "console=hvc0"), "console=hvc0 quiet");
        assert_eq!(with_console("", "console=hvc0"), "console=hvc0");
    }

    #[test]
    fn the_initramfs_holds_init_busybox_and_a_console() {
        let a = initramfs(b"\x7fELF fake busybox", b"\x7fELF fake workload");
        let text = String::from_utf8_lossy(&a);
        for name in ["init\0", "bin/busybox\0", "dev/console\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name}");
        }
        for name in [
            "etc\0",
            "etc/inittab\0",
            "sbin/splitvisor-exit\0",
            "bin/workload\0",
        ] {
            assert!(text.contains(name), "{name}");
        }
        assert!(text.contains(INIT_MARKER));
        assert!(INIT.starts_with("#!/bin/busybox sh\n"));
        assert!(
            !text.contains("modules.dep\0"),
            "modules without being given any"
        );
    }

    #[test]
    fn init_prints_the_markers_the_tests_read() {
        for marker in [
            INIT_MARKER,
            MODULE_FAILED,
            DISK_WRITTEN,
            DISK_CONTENT_BEGIN,
            DISK_CONTENT_END,
            DISK_READ,
            DISK_TEXT,
            DISK_GUEST_TEXT,
            DISK_FAILED,
            DISK_RAW_WRITE,
            IO_LINE,
            IO_BEGIN,
            HVC_LOG_BEGIN,
            HVC_LOG_END,
            NET_LINE,
            NET_FAILED,
            NET_PAGE_BEGIN,
            NET_PAGE_END,
            NET_BENCH,
        ] {
            assert!(INIT.contains(marker.trim_end()), "{marker}");
        }
        assert!(INIT.contains(WORKLOAD_END.trim_end()));
        assert!(INIT.contains(crate::linux_modules::LOAD_LIST));
    }

    #[test]
    fn the_modules_go_under_lib_modules_with_every_directory() {
        let m = Modules {
            version: "6.1.0-57-amd64".into(),
            files: vec![
                (
                    "kernel/drivers/virtio/virtio_ring.ko".into(),
                    b"ring".to_vec(),
                ),
                ("kernel/drivers/virtio/virtio.ko".into(), b"virtio".to_vec()),
                ("kernel/fs/ext4/ext4.ko".into(), b"ext4".to_vec()),
            ],
            modules_dep: "kernel/drivers/virtio/virtio_ring.ko:\n".into(),
        };
        let a = initramfs_with_modules(b"bb", b"wl", &m);
        let text = String::from_utf8_lossy(&a);
        let base = "lib/modules/6.1.0-57-amd64";
        let mut at = 0;
        for name in [
            "lib",
            "lib/modules",
            base,
            &format!("{base}/kernel"),
            &format!("{base}/kernel/drivers"),
            &format!("{base}/kernel/drivers/virtio"),
            &format!("{base}/kernel/drivers/virtio/virtio_ring.ko"),
            &format!("{base}/kernel/drivers/virtio/virtio.ko"),
            &format!("{base}/kernel/fs"),
            &format!("{base}/kernel/fs/ext4"),
            &format!("{base}/kernel/fs/ext4/ext4.ko"),
            &format!("{base}/modules.dep"),
            &format!("{base}/splitvisor.modules"),
        ] {
            let i = text[at..]
                .find(&format!("{name}\0"))
                .unwrap_or_else(|| panic!("no {name} after offset {at}"));
            at += i + name.len();
        }
        assert_eq!(
            m.load_list(),
            "kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n"
        );
    }
}
