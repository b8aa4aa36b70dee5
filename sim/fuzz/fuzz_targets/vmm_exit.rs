//! The vmm-server's exit decoder (`vmm_server::exit::Exit::decode_in`) on
//! an arbitrary `ExitRecord` and RAM size, with the invariants its
//! documentation states: it never panics, an `Mmio` exit lies at or above
//! the RAM size, an exception has a vector below 32 and an error code
//! exactly when the vector pushes one, a port access's value fits its
//! width and is 0 for IN and string accesses, CR and DR numbers are
//! below 16. The IOIO decoders get the raw fields too.
#![no_main]

use ipc_proto::ExitRecord;
use libfuzzer_sys::fuzz_target;
use vmm_server::exit::{
    decode_svm_ioio, decode_vmx_io, exit_name, pushes_error_code, Exit, IoAccess, IoDirection,
};
use zerocopy::FromBytes;

fn check_io(io: &IoAccess) {
    assert_eq!(io.value & !io.size.mask(), 0, "{io:?}");
    if io.direction == IoDirection::In || io.string {
        assert_eq!(io.value, 0, "{io:?}");
    }
    if let Some(a) = io.address_size {
        assert!(matches!(a, 2 | 4 | 8), "{io:?}");
    }
    if let Some(s) = io.segment {
        assert!(s <= 5 && io.address_size.is_some(), "{io:?}");
    }
    let _ = io.mnemonic();
}

fuzz_target!(|data: &[u8]| {
    let n = core::mem::size_of::<ExitRecord>();
    let mut raw = data[..n.min(data.len())].to_vec();
    raw.resize(n, 0);
    let Ok(mut rec) = ExitRecord::read_from_bytes(&raw) else {
        return;
    };
    let t = &data[n.min(data.len())..];
    let mut b = [0u8; 9];
    b[..t.len().min(9)].copy_from_slice(&t[..t.len().min(9)]);
    // Mostly a known arch, so that the decoders run.
    if b[8] & 3 != 0 {
        rec.arch = u32::from(b[8] & 3).min(2);
    }
    let ram = u64::from_le_bytes(b[..8].try_into().unwrap());
    let plain = Exit::decode(&rec);
    assert_eq!(plain, Exit::decode(&rec), "decoding is deterministic");
    let e = Exit::decode_in(&rec, ram);
    match e {
        Exit::Mmio { gpa, .. } => assert!(gpa >= ram, "MMIO at {gpa:#x} inside RAM {ram:#x}"),
        Exit::NestedPageFault { gpa, .. } => assert!(gpa < ram, "{e:?} outside RAM not MMIO"),
        Exit::Exception {
            vector, error_code, ..
        } => {
            assert!(vector < 32, "{e:?}");
            if error_code.is_some() {
                assert!(pushes_error_code(vector), "{e:?}");
            }
        }
        Exit::Io(io) => check_io(&io),
        Exit::CrAccess { cr, gpr, .. } => assert!(cr < 16 && gpr.is_none_or(|g| g < 16), "{e:?}"),
        Exit::DrAccess { dr, gpr, .. } => assert!(dr < 16 && gpr.is_none_or(|g| g < 16), "{e:?}"),
        _ => {}
    }
    if !matches!(e, Exit::Mmio { .. }) {
        assert_eq!(e, plain, "decode_in changes only MMIO");
    }
    if let Some(io) = decode_svm_ioio(rec.exit_info1, rec.regs.rax) {
        check_io(&io);
    }
    if let Some(io) = decode_vmx_io(rec.exit_info1, rec.regs.rax) {
        check_io(&io);
    }
    let _ = format!("{}", exit_name(rec.arch, rec.exit_code));
});
