//! The ATA register file as ATA/ATAPI-6 (T13/1410D) section 7 names it:
//! the Command Block registers at `base + offset` and the Control Block
//! register at `control`.

/// Data register (16 bits, PIO data in and out). A host adapter that
/// takes 32-bit accesses of it splits each into two 16-bit cycles, the low
/// word first (what QEMU's and Bochs's IDE do, and what IDENTIFY DEVICE
/// word 48 announces: [`crate::DataWidth`]).
pub const DATA: u16 = 0;
/// Error register (read) / Features register (write).
pub const ERROR: u16 = 1;
/// Features register (write) / Error register (read).
pub const FEATURES: u16 = 1;
/// Sector Count register.
pub const SECTOR_COUNT: u16 = 2;
/// LBA Low register (LBA bits 7:0; with 48-bit commands, the previous
/// content holds bits 31:24).
pub const LBA_LOW: u16 = 3;
/// LBA Mid register (LBA bits 15:8, previous 39:32).
pub const LBA_MID: u16 = 4;
/// LBA High register (LBA bits 23:16, previous 47:40).
pub const LBA_HIGH: u16 = 5;
/// Device register: the device select bit, the LBA bit, and LBA bits
/// 27:24 for 28-bit commands.
pub const DEVICE: u16 = 6;
/// Status register (read; reading it clears a pending INTRQ).
pub const STATUS: u16 = 7;
/// Command register (write).
pub const COMMAND: u16 = 7;

/// Status register bits (ATA/ATAPI-6 7.15.6).
pub mod status {
    /// BSY: the device owns the Command Block registers.
    pub const BSY: u8 = 0x80;
    /// DRDY: the device accepts commands.
    pub const DRDY: u8 = 0x40;
    /// DF: device fault.
    pub const DF: u8 = 0x20;
    /// DRQ: the device is ready to transfer a word of data.
    pub const DRQ: u8 = 0x08;
    /// ERR: the previous command ended in an error; the Error register says
    /// which.
    pub const ERR: u8 = 0x01;
}

/// Error register bits (ATA/ATAPI-6 7.9.6).
pub mod error {
    /// ICRC (Ultra DMA CRC) or, on older devices, BBK (bad block).
    pub const ICRC: u8 = 0x80;
    /// UNC: uncorrectable data error.
    pub const UNC: u8 = 0x40;
    /// MC: media changed.
    pub const MC: u8 = 0x20;
    /// IDNF: the requested address was not found (past the end of the
    /// medium, or an unreadable address mark).
    pub const IDNF: u8 = 0x10;
    /// MCR: media change requested.
    pub const MCR: u8 = 0x08;
    /// ABRT: the command was aborted (not supported, or a bad parameter).
    pub const ABRT: u8 = 0x04;
    /// NM: no media.
    pub const NM: u8 = 0x02;
    /// AMNF (obsolete): address mark not found.
    pub const AMNF: u8 = 0x01;
}

/// Device register bits (ATA/ATAPI-6 7.10).
pub mod device {
    /// Bits 7 and 5, obsolete, set by convention (what older devices expect).
    pub const OBSOLETE: u8 = 0xa0;
    /// LBA: the address is an LBA, not cylinder/head/sector.
    pub const LBA: u8 = 0x40;
    /// DEV: selects device 1 (the slave); clear for device 0.
    pub const DEV: u8 = 0x10;
}

/// Device Control register bits (ATA/ATAPI-6 7.8), in the Control Block.
pub mod control {
    /// HOB: reads of the Command Block return the previous content (the
    /// high-order bytes of a 48-bit address and count).
    pub const HOB: u8 = 0x80;
    /// SRST: software reset of both devices on the channel while set.
    pub const SRST: u8 = 0x04;
    /// nIEN: the device does not assert INTRQ.
    pub const NIEN: u8 = 0x02;
}

/// Command codes (ATA/ATAPI-6 section 8).
pub mod command {
    /// IDENTIFY DEVICE (8.15).
    pub const IDENTIFY_DEVICE: u8 = 0xec;
    /// IDENTIFY PACKET DEVICE (8.16), what an ATAPI device answers.
    pub const IDENTIFY_PACKET_DEVICE: u8 = 0xa1;
    /// READ SECTORS, 28-bit (8.27).
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS EXT, 48-bit (8.28).
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// WRITE SECTORS, 28-bit (8.62).
    pub const WRITE_SECTORS: u8 = 0x30;
    /// WRITE SECTORS EXT, 48-bit (8.63).
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// FLUSH CACHE (8.10).
    pub const FLUSH_CACHE: u8 = 0xe7;
    /// FLUSH CACHE EXT (8.11).
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    /// READ MULTIPLE, 28-bit (ATA8-ACS 7.26): PIO data-in in DRQ blocks
    /// of the sectors SET MULTIPLE MODE chose, one interrupt a block.
    pub const READ_MULTIPLE: u8 = 0xc4;
    /// READ MULTIPLE EXT, 48-bit (ATA8-ACS 7.27).
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    /// WRITE MULTIPLE, 28-bit (ATA8-ACS 7.64).
    pub const WRITE_MULTIPLE: u8 = 0xc5;
    /// WRITE MULTIPLE EXT, 48-bit (ATA8-ACS 7.65).
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    /// SET MULTIPLE MODE (ATA8-ACS 7.51): the Sector Count register holds
    /// the sectors per DRQ block of the MULTIPLE commands.
    pub const SET_MULTIPLE_MODE: u8 = 0xc6;
}

/// The signature an ATAPI device leaves in LBA Mid and LBA High after a
/// reset or an aborted IDENTIFY DEVICE (ATA/ATAPI-6 9.12).
pub const SIGNATURE_ATAPI: (u8, u8) = (0x14, 0xeb);
/// The signature of a SATA device behind a legacy interface (SATA 1.0a).
pub const SIGNATURE_SATA: (u8, u8) = (0x3c, 0xc3);
/// The signature of a SATA ATAPI device.
pub const SIGNATURE_SATAPI: (u8, u8) = (0x69, 0x96);
