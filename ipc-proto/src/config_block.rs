//! Configuration blocks the image builder patches into a server's ELF
//! after a magic string (`inject`, `trace`): declared zero, found by the
//! magic, read once with a volatile read (the compiler would fold the
//! zeros it was built with).

/// Declares `static $name: [u8; $len]` holding `$magic` and zeros.
#[doc(hidden)]
#[macro_export]
macro_rules! __config_block {
    ($name:ident, $len:expr, $magic:expr) => {
        #[used]
        static $name: [u8; $len] = {
            let mut c = [0u8; $len];
            let mut i = 0;
            while i < $magic.len() {
                c[i] = $magic[i];
                i += 1;
            }
            c
        };
    };
}

/// The block as the image builder left it, read once.
pub fn read<const N: usize>(block: &[u8; N]) -> [u8; N] {
    // SAFETY: a reference to a whole array is valid for a read of it.
    unsafe { core::ptr::read_volatile(block) }
}

/// Writes `body` after the first `magic` in `elf`; `missing` says what an
/// ELF without the block cannot do.
pub fn patch(
    elf: &mut [u8],
    magic: &[u8],
    body: &[u8],
    missing: &'static str,
) -> Result<(), &'static str> {
    let at = elf
        .windows(magic.len())
        .position(|w| w == magic)
        .ok_or(missing)?;
    elf.get_mut(at + magic.len()..at + magic.len() + body.len())
        .ok_or("the configuration block is cut off")?
        .copy_from_slice(body);
    Ok(())
}
