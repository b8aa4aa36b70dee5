//! The component's main: map the EPT, report, block.

use core::fmt::Write;

use sel4_mmu_server::{
    Args, ARGS_MAX, REPORT_LABEL, SLOT_EPT_PD, SLOT_EPT_PDPT, SLOT_EPT_PML4, SLOT_FRAMES,
    SLOT_REPORT,
};
use sel4_sys::{c, invoke};

const LARGE_PAGE: u64 = 1 << 21;

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

/// Reports to the root task (`mapped` frames, seL4's `error` for the
/// first refused one, 0 if none) and blocks: the root task never replies.
fn report(mapped: u64, error: u64) -> ! {
    let _ = invoke(SLOT_REPORT, REPORT_LABEL, &[], &[mapped, error]);
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
        report(0, 0)
    };
    let attrs = c::X86_EPT_DEFAULT_VM_ATTRIBUTES;
    for (what, table, label) in [
        ("EPTPDPT_Map", SLOT_EPT_PDPT, c::X86_EPT_PDPT_MAP),
        ("EPTPD_Map", SLOT_EPT_PD, c::X86_EPT_PD_MAP),
    ] {
        if let Err(e) = invoke(table, label, &[SLOT_EPT_PML4], &[0, attrs]) {
            say(format_args!("seL4 refused {what}: error {}", e.code));
            report(0, e.code);
        }
    }
    for i in 0..args.frames {
        let gpa = i * LARGE_PAGE;
        let r = invoke(
            SLOT_FRAMES + i,
            c::X86_PAGE_MAP_EPT,
            &[SLOT_EPT_PML4],
            &[gpa, c::ALL_RIGHTS, attrs],
        );
        if let Err(e) = r {
            say(format_args!(
                "seL4 refused Page_MapEPT of guest-physical {gpa:#x}: error {}",
                e.code
            ));
            report(i, e.code);
        }
    }
    say(format_args!(
        "EPT: {} MiB of guest RAM in {} 2 MiB pages",
        args.frames * 2,
        args.frames
    ));
    report(args.frames, 0)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say(format_args!("panic: {}", info.message()));
    report(0, 0)
}
