//! The component's main: put the EPT's tables together, report, then map
//! guest RAM as the vmm-server's EPT violations ask for it.

use core::fmt::Write;

use sel4_mmu_server::{
    frame_for, Args, ARGS_MAX, BADGE_VMM, EPT_VIOLATION_LABEL, REPLY_BAD_MESSAGE, REPLY_MAPPED,
    REPLY_NOT_RAM, REPLY_REFUSED, REPORT_LABEL, SLOT_EPT_PD, SLOT_EPT_PDPT, SLOT_EPT_PML4,
    SLOT_EXITS, SLOT_FRAMES, SLOT_REPORT,
};
use sel4_sys::{c, invoke};

struct Out;

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        s.bytes().for_each(sel4_sys::debug_put_char);
        Ok(())
    }
}

/// One line `[mmu] ...` on the kernel's console.
fn say(args: core::fmt::Arguments) {
    let _ = Out.write_str("[mmu] ");
    let _ = Out.write_fmt(args);
    let _ = Out.write_str("\n");
}

/// Reports a failure to the root task (seL4's `error`, 0 if none), which
/// ends the run.
fn fail(error: u64) -> ! {
    sel4_sys::send(SLOT_REPORT, REPORT_LABEL, &[0, error]);
    loop {
        core::hint::spin_loop();
    }
}

/// The arguments: a length (u64) and postcard bytes in the page at `page`.
fn args(page: *const u8) -> Option<Args> {
    // SAFETY: the root task mapped the argument page read-only at `page`
    // (RDI at entry); the length is checked before the bytes are read.
    let bytes = unsafe {
        let len = (page as *const u64).read_volatile() as usize;
        if len > ARGS_MAX {
            return None;
        }
        core::slice::from_raw_parts(page.add(8), len)
    };
    postcard::from_bytes(bytes).ok()
}

/// The component's entry (from `_start`): RDI its argument page, RSI its
/// IPC buffer.
pub extern "C" fn mmu_main(args_page: *const u8, ipc_buffer: *mut u8) -> ! {
    sel4_sys::set_ipc_buffer(ipc_buffer);
    let Some(args) = args(args_page) else {
        say(format_args!("its arguments do not decode"));
        fail(0)
    };
    let attrs = c::X86_EPT_DEFAULT_VM_ATTRIBUTES;
    for (what, table, label) in [
        ("EPTPDPT_Map", SLOT_EPT_PDPT, c::X86_EPT_PDPT_MAP),
        ("EPTPD_Map", SLOT_EPT_PD, c::X86_EPT_PD_MAP),
    ] {
        if let Err(e) = invoke(table, label, &[SLOT_EPT_PML4], &[0, attrs]) {
            say(format_args!("seL4 refused {what}: error {}", e.code));
            fail(e.code);
        }
    }
    say(format_args!(
        "EPT: {} MiB of guest RAM in {} 2 MiB frames, mapped as the guest touches them",
        args.frames * 2,
        args.frames
    ));
    sel4_sys::send(SLOT_REPORT, REPORT_LABEL, &[args.frames, 0]);
    serve(&args)
}

/// Answers the vmm-server's EPT violations: maps the 2 MiB frame that
/// holds the guest-physical address with `Page_MapEPT`, or says why not.
/// Nothing outside guest RAM is ever mapped.
fn serve(args: &Args) -> ! {
    let attrs = c::X86_EPT_DEFAULT_VM_ATTRIBUTES;
    let mut mapped = 0u64;
    let mut msg = sel4_sys::recv(SLOT_EXITS);
    loop {
        let (code, error) = if msg.badge != BADGE_VMM || msg.label != EPT_VIOLATION_LABEL {
            (REPLY_BAD_MESSAGE, 0)
        } else if let Some((i, base)) = frame_for(msg.mrs[0], args.frames) {
            match invoke(
                SLOT_FRAMES + i,
                c::X86_PAGE_MAP_EPT,
                &[SLOT_EPT_PML4],
                &[base, c::ALL_RIGHTS, attrs],
            ) {
                Ok(_) => {
                    mapped += 1;
                    (REPLY_MAPPED, 0)
                }
                Err(e) => (REPLY_REFUSED, e.code),
            }
        } else {
            (REPLY_NOT_RAM, 0)
        };
        msg = sel4_sys::reply_recv(SLOT_EXITS, 0, &[code, mapped, error]);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say(format_args!("panic: {}", info.message()));
    fail(0)
}
