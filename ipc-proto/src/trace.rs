//! Whether the vmm-server records a trace (`splitvisor run --trace FILE`):
//! a configuration block in its ELF that the image builder patches, as
//! [`crate::inject`] does for injected faults, so that tracing needs no
//! separate build and a run without `--trace` pays nothing but one byte
//! read at start. The record itself is `vmm_server::trace`'s.

/// The bytes in front of the configuration in the vmm-server's ELF.
pub const MAGIC: [u8; 16] = *b"SVTRACE-CONFIG01";
/// The block: [`MAGIC`], then 1 when tracing (one byte), three zero
/// bytes, and the most exits to record (`u32`, little-endian, 0: all).
pub const BLOCK_LEN: usize = 24;

/// What to record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Stop recording after this many exits (0: record the whole run);
    /// the run itself goes on untraced.
    pub max_exits: u32,
}

impl TraceConfig {
    /// The block's bytes after the magic.
    pub fn encode(&self) -> [u8; BLOCK_LEN - MAGIC.len()] {
        let mut b = [0u8; BLOCK_LEN - MAGIC.len()];
        b[0] = 1;
        b[4..8].copy_from_slice(&self.max_exits.to_le_bytes());
        b
    }

    /// The configuration in a whole block, if tracing is on.
    pub fn decode(block: &[u8; BLOCK_LEN]) -> Option<Self> {
        let b = &block[MAGIC.len()..];
        (b[0] == 1).then(|| Self {
            max_exits: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// Sets the block in `elf` (the vmm-server's executable) to `config`.
pub fn patch(elf: &mut [u8], config: &TraceConfig) -> Result<(), &'static str> {
    crate::config_block::patch(
        elf,
        &MAGIC,
        &config.encode(),
        "this vmm-server records no traces (no trace block in its ELF)",
    )
}

/// Declares the block, `static $name: [u8; BLOCK_LEN]`: the magic and
/// zeros (no tracing) until patched. Read it with [`read_block`].
#[macro_export]
macro_rules! trace_block {
    ($name:ident) => {
        $crate::__config_block!($name, $crate::trace::BLOCK_LEN, $crate::trace::MAGIC);
    };
}

pub use crate::config_block::read as read_block;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patched_block_reads_back_and_an_unpatched_one_is_off() {
        let mut elf = [0u8; 64];
        elf[8..8 + MAGIC.len()].copy_from_slice(&MAGIC);
        let mut block = [0u8; BLOCK_LEN];
        block.copy_from_slice(&elf[8..8 + BLOCK_LEN]);
        assert_eq!(TraceConfig::decode(&block), None);
        patch(&mut elf, &TraceConfig { max_exits: 5000 }).unwrap();
        block.copy_from_slice(&elf[8..8 + BLOCK_LEN]);
        assert_eq!(
            TraceConfig::decode(&block),
            Some(TraceConfig { max_exits: 5000 })
        );
        assert!(patch(&mut [0u8; 8], &TraceConfig::default()).is_err());
    }
}
