//! Building one bootable image from the stub ELF, the server ELFs and a guest.
//!
//! ```text
//! file offset 0 = physical 0x100000
//! +-------------------------------+
//! | stub flat image               |  every PT_LOAD copied at p_paddr - 0x100000,
//! |  (multiboot header in the     |  the rest (.bss included) zero-filled,
//! |   first 8 KiB)                |  up to the symbol `__image_end`
//! +-------------------------------+ __image_end (4 KiB aligned) = payload offset 0
//! | PayloadHeader (16 bytes)      |
//! | Manifest (postcard)           |
//! +-------------------------------+ 4 KiB aligned
//! | blob: server ELF, verbatim    |
//! +-------------------------------+ 4 KiB aligned
//! | blob: guest flat image        |
//! +-------------------------------+ padded to 4 KiB
//! ```
//!
//! The image is a flat file, not an ELF: the bootloader (QEMU's `-kernel`,
//! GRUB) loads it through the multiboot v1 "a.out kludge" -- the address
//! fields of the multiboot header say where the file goes. The builder sets
//! `load_end_addr` and `bss_end_addr` so that the whole file, payload
//! included, is loaded.

use core::fmt;

use ipc_proto::manifest::{
    Blob, Board, Channel, EntryMode, Guest, GuestSegment, Link, Manifest, MmuMode, PayloadHeader,
    Rights, Task, MANIFEST_MAX, MAX_CHANNELS, MAX_GUEST_SEGMENTS, MAX_TASKS, MAX_VMS,
    PAYLOAD_MAGIC, TASK_NAME_MAX,
};
use ipc_proto::ABI_VERSION;
use zerocopy::{FromBytes, IntoBytes};

use crate::elf::ElfImage;

/// Physical address of the first byte of the image.
pub const IMAGE_BASE: u64 = 0x10_0000;
/// Alignment of the payload, of every blob and of the image's length.
pub const PAGE_SIZE: usize = 4096;
/// The stub symbol that marks the end of its flat image (its .bss included).
pub const IMAGE_END_SYMBOL: &str = "__image_end";

/// Multiboot v1 header magic.
pub const MULTIBOOT_MAGIC: u32 = 0x1BAD_B002;
/// The multiboot header must lie in this many first bytes of the image.
pub const MULTIBOOT_SEARCH_LEN: usize = 8192;
/// Multiboot flag: the address fields of the header are valid ("a.out kludge").
pub const MULTIBOOT_AOUT_KLUDGE: u32 = 1 << 16;
/// Length of the multiboot header through `entry_addr`.
const MULTIBOOT_HEADER_LEN: usize = 32;
// Offsets of the fields inside the multiboot header (Multiboot 0.6.96, 3.1.1).
const MB_FLAGS: usize = 4;
const MB_CHECKSUM: usize = 8;
const MB_HEADER_ADDR: usize = 12;
const MB_LOAD_ADDR: usize = 16;
const MB_LOAD_END_ADDR: usize = 20;
const MB_BSS_END_ADDR: usize = 24;
const MB_ENTRY_ADDR: usize = 28;

const PAYLOAD_HEADER_LEN: usize = core::mem::size_of::<PayloadHeader>();

/// A server to put in the image.
#[derive(Clone, Debug)]
pub struct TaskInput<'a> {
    /// Its name (at most [`TASK_NAME_MAX`] bytes), for messages.
    pub name: &'a str,
    /// What the stub lets it do.
    pub rights: Rights,
    /// Its ELF executable; copied verbatim.
    pub elf: &'a [u8],
}

/// The guest to put in the image.
#[derive(Clone, Copy, Debug)]
pub struct GuestInput<'a> {
    /// Flat bytes copied to guest-physical `load_gpa`.
    pub image: &'a [u8],
    /// Where the image goes in guest RAM.
    pub load_gpa: u64,
    /// Where the VCPU starts.
    pub entry_rip: u64,
    /// Guest RAM in MiB; even, not zero.
    pub ram_mib: u32,
    /// The processor state it starts in.
    pub entry_mode: EntryMode,
    /// Initial RAX, RBX and RSI (multiboot: magic and info address).
    pub entry_regs: [u64; 3],
    /// More (guest-physical address, bytes) to place in guest RAM.
    pub segments: &'a [(u64, Vec<u8>)],
    /// Nested or shadow paging.
    pub mmu: MmuMode,
    /// The devices around the guest.
    pub board: Board,
    /// The host CPU the VM runs on.
    pub cpu: u8,
}

impl<'a> GuestInput<'a> {
    /// Flat 32-bit code at `load_gpa`, entered at `entry_rip`, nested paging.
    pub fn flat32(image: &'a [u8], load_gpa: u64, entry_rip: u64, ram_mib: u32) -> Self {
        Self {
            image,
            load_gpa,
            entry_rip,
            ram_mib,
            entry_mode: EntryMode::Flat32,
            entry_regs: [0; 3],
            segments: &[],
            mmu: MmuMode::Nested,
            board: Board::Isa,
            cpu: 0,
        }
    }
}

/// Why an image could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The stub is not a readable ELF file.
    StubNotElf(String),
    /// The stub has no `__image_end` symbol.
    NoImageEnd,
    /// `__image_end` is not page aligned or not above the load base.
    BadImageEnd(u64),
    /// A loadable segment of the stub lies outside `[0x100000, __image_end)`.
    SegmentOutside {
        /// Its `p_paddr`.
        paddr: u64,
        /// Its `p_memsz`.
        memsz: u64,
        /// The stub's `__image_end`.
        image_end: u64,
    },
    /// A segment has more file bytes than memory bytes.
    SegmentFileLargerThanMemory {
        /// Its `p_paddr`.
        paddr: u64,
    },
    /// No multiboot magic at a 4-byte boundary in the first 8 KiB.
    NoMultibootHeader,
    /// The multiboot header's checksum is wrong.
    MultibootChecksum {
        /// Offset of the header in the image.
        offset: usize,
        /// magic + flags + checksum (should be 0).
        sum: u32,
    },
    /// Flags bit 16 is clear: the bootloader would not use the address fields.
    MultibootNoAddressFields {
        /// The flags found.
        flags: u32,
    },
    /// The header's address fields do not describe this image.
    MultibootAddress {
        /// Which field.
        field: &'static str,
        /// Its value.
        found: u32,
        /// What the image needs.
        expected: u32,
    },
    /// The multiboot entry point is not inside the stub.
    MultibootEntryOutside {
        /// `entry_addr`.
        entry: u32,
        /// The stub's `__image_end`.
        image_end: u64,
    },
    /// More tasks than [`MAX_TASKS`].
    TooManyTasks(usize),
    /// More VMs than [`MAX_VMS`].
    TooManyVms(usize),
    /// More channels than [`MAX_CHANNELS`].
    TooManyChannels(usize),
    /// More extra guest segments than [`MAX_GUEST_SEGMENTS`].
    TooManySegments(usize),
    /// A task's executable is not a readable ELF file.
    TaskNotElf {
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The guest's RAM size is zero or odd.
    BadGuestRam(u32),
    /// The guest image or entry point does not lie in guest RAM.
    GuestOutsideRam {
        /// Load address.
        load_gpa: u64,
        /// Image length.
        len: usize,
        /// Entry point.
        entry_rip: u64,
        /// Guest RAM in MiB.
        ram_mib: u32,
    },
    /// The encoded manifest is larger than the stub reads.
    ManifestTooLarge(usize),
    /// The manifest could not be encoded.
    ManifestEncode(String),
    /// A blob does not fit the u32 fields of the manifest.
    BlobTooLarge {
        /// Which blob.
        what: String,
        /// Its length.
        len: usize,
    },
    /// The whole image does not fit below 4 GiB.
    ImageTooLarge(u64),
    /// The tasks' rights are ones the stub refuses (see
    /// `Manifest::check_rights`), or a name is too long.
    BadRights(String),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ImageError::*;
        match self {
            StubNotElf(e) => write!(f, "the stub is not a readable ELF executable: {e}"),
            NoImageEnd => write!(
                f,
                "the stub ELF has no `{IMAGE_END_SYMBOL}` symbol: define it in the stub's \
                 linker script after .bss (and do not strip the symbol table)"
            ),
            BadImageEnd(v) => write!(
                f,
                "the stub's `{IMAGE_END_SYMBOL}` is {v:#x}: it must be a 4 KiB-aligned physical \
                 address above {IMAGE_BASE:#x}"
            ),
            SegmentOutside {
                paddr,
                memsz,
                image_end,
            } => write!(
                f,
                "a loadable segment of the stub ({paddr:#x}..{:#x}) lies outside \
                 [{IMAGE_BASE:#x}, {IMAGE_END_SYMBOL} = {image_end:#x}): fix the stub's linker \
                 script (physical addresses start at {IMAGE_BASE:#x}, `{IMAGE_END_SYMBOL}` \
                 comes last)",
                paddr.saturating_add(*memsz)
            ),
            SegmentFileLargerThanMemory { paddr } => write!(
                f,
                "the stub's segment at {paddr:#x} has p_filesz > p_memsz: the ELF is corrupt"
            ),
            NoMultibootHeader => write!(
                f,
                "no multiboot header (magic {MULTIBOOT_MAGIC:#x}, 4-byte aligned) in the first \
                 {MULTIBOOT_SEARCH_LEN} bytes of the stub's image: put it in the first loaded \
                 section of the stub"
            ),
            MultibootChecksum { offset, sum } => write!(
                f,
                "the multiboot header at offset {offset:#x} has a bad checksum (magic + flags + \
                 checksum = {sum:#x}, should be 0)"
            ),
            MultibootNoAddressFields { flags } => write!(
                f,
                "the multiboot header's flags ({flags:#x}) lack bit 16: the image is flat, so \
                 the bootloader needs the address fields"
            ),
            MultibootAddress {
                field,
                found,
                expected,
            } => write!(
                f,
                "the multiboot header's {field} is {found:#x}, but this image needs \
                 {expected:#x}"
            ),
            MultibootEntryOutside { entry, image_end } => write!(
                f,
                "the multiboot entry_addr {entry:#x} is not inside the stub \
                 [{IMAGE_BASE:#x}, {image_end:#x})"
            ),
            TooManyTasks(n) => write!(f, "{n} tasks given; an image holds at most {MAX_TASKS}"),
            TooManyVms(n) => write!(f, "{n} VMs given; an image holds at most {MAX_VMS}"),
            TooManyChannels(n) => write!(
                f,
                "{n} channels given; an image holds at most {MAX_CHANNELS}"
            ),
            TooManySegments(n) => write!(
                f,
                "{n} extra guest segments given; an image holds at most {MAX_GUEST_SEGMENTS}"
            ),
            BadRights(why) => write!(f, "the image's rights are wrong: {why}"),
            TaskNotElf { name, reason } => {
                write!(
                    f,
                    "the {name} executable is not a readable ELF file: {reason}"
                )
            }
            BadGuestRam(m) => write!(
                f,
                "guest RAM of {m} MiB is not allowed: give an even, non-zero number of MiB"
            ),
            GuestOutsideRam {
                load_gpa,
                len,
                entry_rip,
                ram_mib,
            } => write!(
                f,
                "the guest ({len} bytes at {load_gpa:#x}, entry {entry_rip:#x}) does not fit in \
                 its {ram_mib} MiB of RAM: give it more RAM or load it lower"
            ),
            ManifestTooLarge(n) => write!(
                f,
                "the encoded manifest is {n} bytes; the stub reads at most {MANIFEST_MAX}"
            ),
            ManifestEncode(e) => write!(f, "could not encode the manifest: {e}"),
            BlobTooLarge { what, len } => write!(
                f,
                "{what} is {len} bytes: the payload must stay below 4 GiB (u32 offsets)"
            ),
            ImageTooLarge(end) => write!(
                f,
                "the image would end at physical {end:#x}, above 4 GiB where multiboot cannot \
                 load it"
            ),
        }
    }
}

impl std::error::Error for ImageError {}

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn write_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The stub's flat image: bytes from [`IMAGE_BASE`] to `__image_end`.
pub fn flatten_stub(stub_elf: &[u8]) -> Result<Vec<u8>, ImageError> {
    let elf = ElfImage::parse(stub_elf).map_err(|e| ImageError::StubNotElf(e.0))?;
    let image_end = elf.symbol(IMAGE_END_SYMBOL).ok_or(ImageError::NoImageEnd)?;
    if image_end <= IMAGE_BASE || !image_end.is_multiple_of(PAGE_SIZE as u64) {
        return Err(ImageError::BadImageEnd(image_end));
    }
    if image_end > u64::from(u32::MAX) {
        return Err(ImageError::ImageTooLarge(image_end));
    }
    let len = (image_end - IMAGE_BASE) as usize;
    let mut flat = vec![0u8; len];
    for seg in &elf.segments {
        if seg.memsz == 0 {
            continue;
        }
        let end = seg.paddr.checked_add(seg.memsz);
        if seg.paddr < IMAGE_BASE || end.is_none_or(|e| e > image_end) {
            return Err(ImageError::SegmentOutside {
                paddr: seg.paddr,
                memsz: seg.memsz,
                image_end,
            });
        }
        if seg.bytes.len() as u64 > seg.memsz {
            return Err(ImageError::SegmentFileLargerThanMemory { paddr: seg.paddr });
        }
        let at = (seg.paddr - IMAGE_BASE) as usize;
        flat[at..at + seg.bytes.len()].copy_from_slice(seg.bytes);
    }
    Ok(flat)
}

/// Finds the multiboot v1 header in `flat`, checks it, and returns its offset.
///
/// The header must describe a flat image loaded at [`IMAGE_BASE`]:
/// `load_addr` = 0x100000, `header_addr` = 0x100000 + its offset, and
/// `entry_addr` inside the stub (`stub_len` bytes).
pub fn find_multiboot_header(flat: &[u8], stub_len: usize) -> Result<usize, ImageError> {
    let search = flat.len().min(MULTIBOOT_SEARCH_LEN);
    let offset = (0..search.saturating_sub(MULTIBOOT_HEADER_LEN - 1))
        .step_by(4)
        .find(|&o| read_u32(flat, o) == MULTIBOOT_MAGIC)
        .ok_or(ImageError::NoMultibootHeader)?;
    let flags = read_u32(flat, offset + MB_FLAGS);
    let sum = MULTIBOOT_MAGIC
        .wrapping_add(flags)
        .wrapping_add(read_u32(flat, offset + MB_CHECKSUM));
    if sum != 0 {
        return Err(ImageError::MultibootChecksum { offset, sum });
    }
    if flags & MULTIBOOT_AOUT_KLUDGE == 0 {
        return Err(ImageError::MultibootNoAddressFields { flags });
    }
    let check = |field: &'static str, at: usize, expected: u32| {
        let found = read_u32(flat, offset + at);
        if found == expected {
            Ok(())
        } else {
            Err(ImageError::MultibootAddress {
                field,
                found,
                expected,
            })
        }
    };
    check("load_addr", MB_LOAD_ADDR, IMAGE_BASE as u32)?;
    check(
        "header_addr",
        MB_HEADER_ADDR,
        IMAGE_BASE as u32 + offset as u32,
    )?;
    let entry = read_u32(flat, offset + MB_ENTRY_ADDR);
    let image_end = IMAGE_BASE + stub_len as u64;
    if u64::from(entry) < IMAGE_BASE || u64::from(entry) >= image_end {
        return Err(ImageError::MultibootEntryOutside { entry, image_end });
    }
    Ok(offset)
}

/// Sets `load_end_addr` and `bss_end_addr` of the header at `offset` so that
/// the bootloader loads all of `image`.
fn patch_multiboot(image: &mut [u8], offset: usize) -> Result<(), ImageError> {
    let end = IMAGE_BASE + image.len() as u64;
    let end32 = u32::try_from(end).map_err(|_| ImageError::ImageTooLarge(end))?;
    write_u32(image, offset + MB_LOAD_END_ADDR, end32);
    write_u32(image, offset + MB_BSS_END_ADDR, end32);
    Ok(())
}

fn blob_len(what: impl FnOnce() -> String, len: usize) -> Result<u32, ImageError> {
    u32::try_from(len).map_err(|_| ImageError::BlobTooLarge { what: what(), len })
}

/// Encodes the manifest and places the blobs; returns the manifest bytes and
/// the offset of each blob (tasks first, then the guest).
fn layout(
    tasks: &[TaskInput<'_>],
    channels: &[Channel],
    guest: &GuestInput<'_>,
) -> Result<(Vec<u8>, Vec<usize>), ImageError> {
    let lens: Vec<(String, usize)> = tasks
        .iter()
        .map(|t| (format!("the {} executable", t.name), t.elf.len()))
        .chain([("the guest image".to_string(), guest.image.len())])
        .chain(
            guest
                .segments
                .iter()
                .map(|(gpa, b)| (format!("the guest segment at {gpa:#x}"), b.len())),
        )
        .collect();
    // The manifest holds the blob offsets and the blobs start after the
    // manifest: start from one page and grow until the manifest fits.
    let mut first = align_up(PAYLOAD_HEADER_LEN + 1, PAGE_SIZE);
    loop {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut at = first;
        let mut blobs = Vec::with_capacity(lens.len());
        for (what, len) in &lens {
            let offset = blob_len(|| what.clone(), at)?;
            let len32 = blob_len(|| what.clone(), *len)?;
            offset
                .checked_add(len32)
                .ok_or_else(|| ImageError::BlobTooLarge {
                    what: what.clone(),
                    len: *len,
                })?;
            offsets.push(at);
            blobs.push(Blob { offset, len: len32 });
            at = align_up(at + len, PAGE_SIZE);
        }
        let mut manifest_tasks = heapless::Vec::new();
        for (t, elf) in tasks.iter().zip(&blobs) {
            let name = heapless::String::try_from(t.name).map_err(|_| {
                ImageError::BadRights(format!(
                    "the task name {:?} is longer than {TASK_NAME_MAX} bytes",
                    t.name
                ))
            })?;
            manifest_tasks
                .push(Task {
                    name,
                    elf: *elf,
                    rights: t.rights.clone(),
                })
                .map_err(|_| ImageError::TooManyTasks(tasks.len()))?;
        }
        let mut segments = heapless::Vec::new();
        for ((gpa, _), blob) in guest.segments.iter().zip(&blobs[tasks.len() + 1..]) {
            segments
                .push(GuestSegment {
                    blob: *blob,
                    gpa: *gpa,
                })
                .map_err(|_| ImageError::TooManySegments(guest.segments.len()))?;
        }
        let named = |c: &Channel, client: &str, server: &str| {
            let name = |i: u8| tasks.get(usize::from(i)).map(|t| t.name);
            name(c.client) == Some(client) && name(c.server) == Some(server)
        };
        let uart_channel = channels
            .iter()
            .position(|c| named(c, "vmm-server", "uart-server"))
            .map_or(0, |n| n as u8 + 1);
        // Every channel the mmu-server serves carries guest writes.
        let guest_write_channels = channels
            .iter()
            .enumerate()
            .filter(|(_, c)| tasks.get(usize::from(c.server)).map(|t| t.name) == Some("mmu-server"))
            .fold(0u16, |m, (i, _)| m | 1 << i);
        let manifest = Manifest {
            uart_channel,
            guest_write_channels,
            tasks: manifest_tasks,
            channels: heapless::Vec::from_slice(channels)
                .map_err(|_| ImageError::TooManyChannels(channels.len()))?,
            links: heapless::Vec::new(),
            guest: Some(Guest {
                entry_mode: guest.entry_mode,
                entry_rax: guest.entry_regs[0],
                entry_rbx: guest.entry_regs[1],
                entry_rsi: guest.entry_regs[2],
                segments,
                mmu: guest.mmu,
                board: guest.board,
                cpu: guest.cpu,
                ..Guest::flat32(
                    guest.ram_mib,
                    blobs[tasks.len()],
                    guest.load_gpa,
                    guest.entry_rip,
                )
            }),
        };
        manifest
            .check_rights()
            .map_err(|why| ImageError::BadRights(why.to_string()))?;
        let bytes = postcard::to_allocvec(&manifest)
            .map_err(|e| ImageError::ManifestEncode(e.to_string()))?;
        if bytes.len() > MANIFEST_MAX {
            return Err(ImageError::ManifestTooLarge(bytes.len()));
        }
        let need = align_up(PAYLOAD_HEADER_LEN + bytes.len(), PAGE_SIZE);
        if need <= first {
            return Ok((bytes, offsets));
        }
        first = need;
    }
}

/// The payload (header, manifest, blobs), page aligned.
pub fn build_payload(
    tasks: &[TaskInput<'_>],
    channels: &[Channel],
    guest: &GuestInput<'_>,
) -> Result<Vec<u8>, ImageError> {
    if tasks.len() > MAX_TASKS {
        return Err(ImageError::TooManyTasks(tasks.len()));
    }
    for t in tasks {
        ElfImage::parse(t.elf).map_err(|e| ImageError::TaskNotElf {
            name: t.name.to_string(),
            reason: e.0,
        })?;
    }
    if guest.ram_mib == 0 || !guest.ram_mib.is_multiple_of(2) {
        return Err(ImageError::BadGuestRam(guest.ram_mib));
    }
    let ram = u64::from(guest.ram_mib) << 20;
    let fits = guest
        .load_gpa
        .checked_add(guest.image.len() as u64)
        .is_some_and(|end| end <= ram)
        && guest.entry_rip < ram;
    if !fits {
        return Err(ImageError::GuestOutsideRam {
            load_gpa: guest.load_gpa,
            len: guest.image.len(),
            entry_rip: guest.entry_rip,
            ram_mib: guest.ram_mib,
        });
    }

    let (manifest, offsets) = layout(tasks, channels, guest)?;
    let header = PayloadHeader {
        magic: PAYLOAD_MAGIC,
        abi_version: ABI_VERSION,
        manifest_len: manifest.len() as u32,
    };
    let mut payload = Vec::new();
    payload.extend_from_slice(header.as_bytes());
    payload.extend_from_slice(&manifest);
    let blobs = tasks
        .iter()
        .map(|t| t.elf)
        .chain([guest.image])
        .chain(guest.segments.iter().map(|(_, b)| b.as_slice()));
    for (bytes, offset) in blobs.zip(offsets) {
        payload.resize(offset, 0);
        payload.extend_from_slice(bytes);
    }
    payload.resize(align_up(payload.len(), PAGE_SIZE), 0);
    Ok(payload)
}

/// The payload of the tasks in no VM (a switch shared by the VMs): their
/// manifest (no guest; `links` join their channels to the VMs') and ELFs.
/// It goes after every VM's ([`join_payloads`]).
pub fn build_no_vm_payload(
    tasks: &[TaskInput<'_>],
    channels: &[Channel],
    links: &[Link],
) -> Result<Vec<u8>, ImageError> {
    if tasks.len() > MAX_TASKS {
        return Err(ImageError::TooManyTasks(tasks.len()));
    }
    let mut first = align_up(PAYLOAD_HEADER_LEN + 1, PAGE_SIZE);
    loop {
        let mut at = first;
        let mut offsets = Vec::new();
        let mut manifest_tasks = heapless::Vec::new();
        for t in tasks {
            ElfImage::parse(t.elf).map_err(|e| ImageError::TaskNotElf {
                name: t.name.to_string(),
                reason: e.0,
            })?;
            let what = || format!("the {} executable", t.name);
            let elf = Blob {
                offset: blob_len(what, at)?,
                len: blob_len(what, t.elf.len())?,
            };
            let name = heapless::String::try_from(t.name).map_err(|_| {
                ImageError::BadRights(format!(
                    "the task name {:?} is longer than {TASK_NAME_MAX} bytes",
                    t.name
                ))
            })?;
            let rights = t.rights.clone();
            manifest_tasks
                .push(Task { name, elf, rights })
                .map_err(|_| ImageError::TooManyTasks(tasks.len()))?;
            offsets.push(at);
            at = align_up(at + t.elf.len(), PAGE_SIZE);
        }
        let manifest = Manifest {
            tasks: manifest_tasks,
            guest: None,
            channels: heapless::Vec::from_slice(channels)
                .map_err(|_| ImageError::TooManyChannels(channels.len()))?,
            uart_channel: 0,
            guest_write_channels: 0,
            links: heapless::Vec::from_slice(links)
                .map_err(|_| ImageError::TooManyChannels(links.len()))?,
        };
        manifest
            .check_rights()
            .map_err(|why| ImageError::BadRights(why.to_string()))?;
        let bytes = postcard::to_allocvec(&manifest)
            .map_err(|e| ImageError::ManifestEncode(e.to_string()))?;
        let need = align_up(PAYLOAD_HEADER_LEN + bytes.len(), PAGE_SIZE);
        if need > first {
            first = need;
            continue;
        }
        let header = PayloadHeader {
            magic: PAYLOAD_MAGIC,
            abi_version: ABI_VERSION,
            manifest_len: bytes.len() as u32,
        };
        let mut payload = header.as_bytes().to_vec();
        payload.extend_from_slice(&bytes);
        for (t, offset) in tasks.iter().zip(offsets) {
            payload.resize(offset, 0);
            payload.extend_from_slice(t.elf);
        }
        payload.resize(align_up(payload.len(), PAGE_SIZE), 0);
        return Ok(payload);
    }
}

/// Builds the bootable image: the stub's flat image, then the payload, with
/// the multiboot header patched to load all of it.
pub fn build_image(
    stub_elf: &[u8],
    tasks: &[TaskInput<'_>],
    channels: &[Channel],
    guest: &GuestInput<'_>,
) -> Result<Vec<u8>, ImageError> {
    image_with_payload(stub_elf, &build_payload(tasks, channels, guest)?)
}

/// The bootable image of `stub_elf` and a payload.
pub fn image_with_payload(stub_elf: &[u8], payload: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut image = flatten_stub(stub_elf)?;
    let stub_len = image.len();
    let header = find_multiboot_header(&image, stub_len)?;
    image.extend_from_slice(payload);
    patch_multiboot(&mut image, header)?;
    Ok(image)
}

/// One payload for several VMs, from one payload each (`build_payload`):
/// their manifests back to back (VM n is the n-th), then each one's blobs
/// with the blob offsets in its manifest moved to where they now lie.
pub fn join_payloads(vms: &[Vec<u8>]) -> Result<Vec<u8>, ImageError> {
    // The tasks in no VM may come after MAX_VMS VMs.
    if vms.len() > MAX_VMS + 1 {
        return Err(ImageError::TooManyVms(vms.len()));
    }
    let mut with_guest = 0;
    let bad = |why: &str| ImageError::ManifestEncode(format!("joining payloads: {why}"));
    let mut parts = Vec::new();
    for p in vms {
        let header = PayloadHeader::read_from_prefix(p)
            .map_err(|_| bad("no header"))?
            .0;
        let start = PAYLOAD_HEADER_LEN;
        let bytes = p
            .get(start..start + header.manifest_len as usize)
            .ok_or_else(|| bad("truncated manifest"))?;
        let m: Manifest = postcard::from_bytes(bytes).map_err(|e| bad(&e.to_string()))?;
        let guest = m.guest.iter();
        let offsets = m.tasks.iter().map(|t| t.elf);
        let blobs_at = offsets
            .chain(guest.clone().map(|g| g.image))
            .chain(guest.flat_map(|g| g.segments.iter().map(|s| s.blob)))
            .map(|b| b.offset as usize)
            .min()
            .unwrap_or(p.len());
        let blobs = p
            .get(blobs_at..)
            .ok_or_else(|| bad("a blob lies outside"))?;
        with_guest += usize::from(m.guest.is_some());
        parts.push((m, blobs, blobs_at));
    }
    if with_guest > MAX_VMS {
        return Err(ImageError::TooManyVms(with_guest));
    }
    // As in `layout`: grow the manifest area until the manifests fit.
    let mut first = align_up(PAYLOAD_HEADER_LEN + 1, PAGE_SIZE);
    loop {
        let mut manifests = Vec::new();
        let mut starts = Vec::new();
        let mut at = first;
        for (m, blobs, old_at) in &parts {
            starts.push(at);
            let mut m = m.clone();
            let moved = |b: &mut Blob| -> Result<(), ImageError> {
                let offset = b.offset as usize - old_at + at;
                b.offset = blob_len(|| "a blob".into(), offset)?;
                Ok(())
            };
            m.tasks.iter_mut().try_for_each(|t| moved(&mut t.elf))?;
            if let Some(g) = m.guest.as_mut() {
                moved(&mut g.image)?;
                g.segments.iter_mut().try_for_each(|s| moved(&mut s.blob))?;
            }
            manifests.extend(postcard::to_allocvec(&m).map_err(|e| bad(&e.to_string()))?);
            at = align_up(at + blobs.len(), PAGE_SIZE);
        }
        if manifests.len() > MANIFEST_MAX {
            return Err(ImageError::ManifestTooLarge(manifests.len()));
        }
        let need = align_up(PAYLOAD_HEADER_LEN + manifests.len(), PAGE_SIZE);
        if need > first {
            first = need;
            continue;
        }
        let header = PayloadHeader {
            magic: PAYLOAD_MAGIC,
            abi_version: ABI_VERSION,
            manifest_len: manifests.len() as u32,
        };
        let mut payload = header.as_bytes().to_vec();
        payload.extend_from_slice(&manifests);
        for ((_, blobs, _), at) in parts.iter().zip(starts) {
            payload.resize(at, 0);
            payload.extend_from_slice(blobs);
        }
        payload.resize(align_up(payload.len(), PAGE_SIZE), 0);
        return Ok(payload);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zerocopy::FromBytes;

    /// A 32-byte multiboot header for an image loaded at 0x100000, the
    /// header `offset` bytes into it.
    pub fn multiboot_header(offset: u32, flags: u32, entry: u32) -> Vec<u8> {
        let checksum = 0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags);
        let base = IMAGE_BASE as u32;
        [
            MULTIBOOT_MAGIC,
            flags,
            checksum,
            base + offset,
            base,
            0,
            0,
            entry,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
    }

    /// One loadable segment of a synthetic ELF.
    pub struct Seg {
        pub paddr: u64,
        pub bytes: Vec<u8>,
        pub memsz: u64,
    }

    /// A minimal little-endian ELF64 executable: the given PT_LOAD segments
    /// (virtual addresses deliberately differ from physical ones) and a
    /// symbol table holding `symbols` as absolute symbols.
    pub fn synthetic_elf(segs: &[Seg], symbols: &[(&str, u64)]) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        const SHDR: usize = 64;
        const SYM: usize = 24;
        let mut out = vec![0u8; EHDR + PHDR * segs.len()];
        let mut seg_offsets = Vec::new();
        for s in segs {
            out.resize(align_up(out.len(), 16), 0);
            seg_offsets.push(out.len());
            out.extend_from_slice(&s.bytes);
        }
        // .strtab
        let mut strtab = vec![0u8];
        let mut name_offsets = Vec::new();
        for (name, _) in symbols {
            name_offsets.push(strtab.len() as u32);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        // .symtab
        out.resize(align_up(out.len(), 8), 0);
        let symtab_off = out.len();
        out.extend_from_slice(&[0u8; SYM]);
        for ((_, value), name) in symbols.iter().zip(&name_offsets) {
            out.extend_from_slice(&name.to_le_bytes());
            out.push(0x10); // STB_GLOBAL, STT_NOTYPE
            out.push(0);
            out.extend_from_slice(&0xfff1u16.to_le_bytes()); // SHN_ABS
            out.extend_from_slice(&value.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
        }
        let symtab_len = out.len() - symtab_off;
        let strtab_off = out.len();
        out.extend_from_slice(&strtab);
        let shstrtab = b"\0.symtab\0.strtab\0.shstrtab\0";
        let shstrtab_off = out.len();
        out.extend_from_slice(shstrtab);
        out.resize(align_up(out.len(), 8), 0);
        let shoff = out.len();
        let shdr = |name: u32, ty: u32, off: usize, size: usize, link: u32, info: u32, ent: u64| {
            let mut h = Vec::with_capacity(SHDR);
            h.extend_from_slice(&name.to_le_bytes());
            h.extend_from_slice(&ty.to_le_bytes());
            h.extend_from_slice(&0u64.to_le_bytes()); // flags
            h.extend_from_slice(&0u64.to_le_bytes()); // addr
            h.extend_from_slice(&(off as u64).to_le_bytes());
            h.extend_from_slice(&(size as u64).to_le_bytes());
            h.extend_from_slice(&link.to_le_bytes());
            h.extend_from_slice(&info.to_le_bytes());
            h.extend_from_slice(&8u64.to_le_bytes()); // addralign
            h.extend_from_slice(&ent.to_le_bytes());
            h
        };
        out.extend_from_slice(&[0u8; SHDR]);
        out.extend(shdr(1, 2, symtab_off, symtab_len, 2, 1, SYM as u64));
        out.extend(shdr(9, 3, strtab_off, strtab.len(), 0, 0, 0));
        out.extend(shdr(17, 3, shstrtab_off, shstrtab.len(), 0, 0, 0));

        // ELF header.
        let mut h = Vec::with_capacity(EHDR);
        h.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        h.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&IMAGE_BASE.to_le_bytes()); // entry
        h.extend_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
        h.extend_from_slice(&(shoff as u64).to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        for v in [EHDR, PHDR, segs.len(), SHDR, 4, 3] {
            h.extend_from_slice(&(v as u16).to_le_bytes());
        }
        out[..EHDR].copy_from_slice(&h);
        for (i, (s, off)) in segs.iter().zip(&seg_offsets).enumerate() {
            let mut p = Vec::with_capacity(PHDR);
            p.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            p.extend_from_slice(&7u32.to_le_bytes()); // RWX
            p.extend_from_slice(&(*off as u64).to_le_bytes());
            p.extend_from_slice(&(s.paddr + 0xffff_8000_0000_0000).to_le_bytes()); // vaddr
            p.extend_from_slice(&s.paddr.to_le_bytes());
            p.extend_from_slice(&(s.bytes.len() as u64).to_le_bytes());
            p.extend_from_slice(&s.memsz.to_le_bytes());
            p.extend_from_slice(&4096u64.to_le_bytes());
            out[EHDR + i * PHDR..EHDR + (i + 1) * PHDR].copy_from_slice(&p);
        }
        out
    }

    /// A stub with a good multiboot header at offset 0x20, some code, a
    /// data segment on the next page and 2 pages of .bss.
    fn good_stub() -> Vec<u8> {
        let mut text = vec![0x90u8; 0x20];
        text.extend(multiboot_header(0x20, MULTIBOOT_AOUT_KLUDGE | 3, 0x10_0000));
        text.extend([0xF4, 0xEB, 0xFD]); // hlt; jmp
        synthetic_elf(
            &[
                Seg {
                    paddr: 0x10_0000,
                    memsz: text.len() as u64,
                    bytes: text,
                },
                Seg {
                    paddr: 0x10_1000,
                    bytes: vec![0xAA; 100],
                    memsz: 100 + 0x2000,
                },
            ],
            &[("_start", 0x10_0000), (IMAGE_END_SYMBOL, 0x10_4000)],
        )
    }

    fn server_elf() -> Vec<u8> {
        synthetic_elf(
            &[Seg {
                paddr: 0x40_0000,
                bytes: vec![0x55; 5000],
                memsz: 5000,
            }],
            &[],
        )
    }

    fn guest_bytes() -> Vec<u8> {
        (0..300u32).map(|i| i as u8).collect()
    }

    fn guest(image: &[u8]) -> GuestInput<'_> {
        GuestInput::flat32(image, 0x10_0000, 0x10_0000, 16)
    }

    fn decode(payload: &[u8]) -> (PayloadHeader, Manifest) {
        let header = PayloadHeader::read_from_prefix(payload).unwrap().0;
        let start = PAYLOAD_HEADER_LEN;
        let manifest =
            postcard::from_bytes(&payload[start..start + header.manifest_len as usize]).unwrap();
        (header, manifest)
    }

    fn blob(payload: &[u8], b: Blob) -> &[u8] {
        &payload[b.offset as usize..(b.offset + b.len) as usize]
    }

    /// Two VMs (a server and a guest each, different bytes) joined: the
    /// manifests follow each other and every blob points at its own bytes.
    #[test]
    fn joined_payloads_hold_each_vms_manifest_and_blobs() {
        let (elf, g0) = (server_elf(), guest_bytes());
        let g1: Vec<u8> = g0.iter().map(|b| !b).collect();
        let task = TaskInput {
            name: "vmm-server",
            rights: Rights::default(),
            elf: &elf,
        };
        let one = |g: &[u8]| build_payload(std::slice::from_ref(&task), &[], &guest(g)).unwrap();
        let joined = join_payloads(&[one(&g0), one(&g1)]).unwrap();
        let header = PayloadHeader::read_from_prefix(&joined).unwrap().0;
        let area = &joined[PAYLOAD_HEADER_LEN..PAYLOAD_HEADER_LEN + header.manifest_len as usize];
        let (m0, rest): (Manifest, _) = postcard::take_from_bytes(area).unwrap();
        let (m1, rest): (Manifest, _) = postcard::take_from_bytes(rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            blob(&joined, m0.guest.as_ref().unwrap().image),
            g0.as_slice()
        );
        assert_eq!(
            blob(&joined, m1.guest.as_ref().unwrap().image),
            g1.as_slice()
        );
        assert_eq!(blob(&joined, m0.tasks[0].elf), elf.as_slice());
        assert_eq!(blob(&joined, m1.tasks[0].elf), elf.as_slice());
        assert_ne!(
            m0.guest.as_ref().unwrap().image,
            m1.guest.as_ref().unwrap().image
        );
        assert_eq!(
            join_payloads(&vec![one(&g0); MAX_VMS + 1]),
            Err(ImageError::TooManyVms(MAX_VMS + 1))
        );
        // The tasks in no VM after the VMs: their ELF moved too, and each
        // link joins its channel to a VM's.
        let link = Link {
            channel: 0,
            vm: 1,
            vm_channel: 0,
        };
        let far = Channel {
            client: ipc_proto::manifest::FAR_END,
            server: 0,
        };
        let no_vm = build_no_vm_payload(std::slice::from_ref(&task), &[far], &[link]).unwrap();
        let joined = join_payloads(&[one(&g0), one(&g1), no_vm]).unwrap();
        let header = PayloadHeader::read_from_prefix(&joined).unwrap().0;
        let area = &joined[PAYLOAD_HEADER_LEN..PAYLOAD_HEADER_LEN + header.manifest_len as usize];
        let (_, rest): (Manifest, _) = postcard::take_from_bytes(area).unwrap();
        let (_, rest): (Manifest, _) = postcard::take_from_bytes(rest).unwrap();
        let (sys, rest): (Manifest, _) = postcard::take_from_bytes(rest).unwrap();
        assert!(rest.is_empty() && sys.guest.is_none());
        assert_eq!(sys.links[0], link);
        assert_eq!(blob(&joined, sys.tasks[0].elf), elf.as_slice());
        // A task in no VM with guest RAM is refused by the builder too.
        let ram = TaskInput {
            rights: Rights {
                guest_ram: ipc_proto::manifest::GuestRam::ReadOnly,
                ..Rights::default()
            },
            ..task
        };
        assert!(build_no_vm_payload(&[ram], &[far], &[link]).is_err());
    }

    #[test]
    fn stub_is_flattened_by_physical_address() {
        let flat = flatten_stub(&good_stub()).unwrap();
        assert_eq!(flat.len(), 0x4000);
        assert_eq!(read_u32(&flat, 0x20), MULTIBOOT_MAGIC);
        assert_eq!(&flat[0x40..0x43], &[0xF4, 0xEB, 0xFD]);
        assert!(flat[0x43..0x1000].iter().all(|&b| b == 0));
        assert!(flat[0x1000..0x1064].iter().all(|&b| b == 0xAA));
        assert!(flat[0x1064..].iter().all(|&b| b == 0), ".bss is zero");
    }

    #[test]
    fn payload_follows_stub_and_decodes_back() {
        let server = server_elf();
        let g = guest_bytes();
        let tasks = [TaskInput {
            name: "vmm-server",
            rights: Rights::default(),
            elf: &server,
        }];
        let image = build_image(&good_stub(), &tasks, &[], &guest(&g)).unwrap();
        assert_eq!(image.len() % PAGE_SIZE, 0);
        let payload = &image[0x4000..];
        let (header, manifest) = decode(payload);
        assert_eq!(header.magic, PAYLOAD_MAGIC);
        assert_eq!(header.abi_version, ABI_VERSION);
        assert_eq!(manifest.tasks.len(), 1);
        let task = manifest.task("vmm-server").unwrap();
        assert_eq!(
            task.elf.offset as usize, PAGE_SIZE,
            "a small manifest fits page 0"
        );
        assert!(task.elf.offset as usize >= PAYLOAD_HEADER_LEN + header.manifest_len as usize);
        assert_eq!(blob(payload, task.elf), &server[..]);
        let gb = manifest.guest.as_ref().unwrap().image;
        assert_eq!(gb.offset as usize % PAGE_SIZE, 0);
        assert!(gb.offset >= task.elf.offset + task.elf.len);
        assert_eq!(blob(payload, gb), &g[..]);
        assert_eq!(manifest.guest.as_ref().unwrap().ram_mib, 16);
        assert_eq!(manifest.guest.as_ref().unwrap().load_gpa, 0x10_0000);
        assert_eq!(manifest.guest.as_ref().unwrap().entry_rip, 0x10_0000);
        assert_eq!(
            image.len(),
            0x4000 + (gb.offset + gb.len) as usize + 4096 - 300
        );
    }

    #[test]
    fn image_without_tasks_is_allowed() {
        let g = guest_bytes();
        let image = build_image(&good_stub(), &[], &[], &guest(&g)).unwrap();
        let payload = &image[0x4000..];
        let (_, manifest) = decode(payload);
        assert!(manifest.tasks.is_empty());
        assert_eq!(manifest.guest.as_ref().unwrap().image.offset, 4096);
        assert_eq!(
            blob(payload, manifest.guest.as_ref().unwrap().image),
            &g[..]
        );
    }

    #[test]
    fn multiboot_header_is_patched_to_cover_the_whole_image() {
        let g = guest_bytes();
        let image = build_image(&good_stub(), &[], &[], &guest(&g)).unwrap();
        let end = IMAGE_BASE as u32 + image.len() as u32;
        assert_eq!(read_u32(&image, 0x20 + MB_LOAD_END_ADDR), end);
        assert_eq!(read_u32(&image, 0x20 + MB_BSS_END_ADDR), end);
        // Checksum covers magic, flags and checksum only: still valid.
        assert_eq!(find_multiboot_header(&image, 0x4000), Ok(0x20));
    }

    #[test]
    fn multiboot_errors() {
        let stub_with = |hdr: Vec<u8>, at: usize| {
            let mut text = vec![0u8; at];
            text.extend(hdr);
            synthetic_elf(
                &[Seg {
                    paddr: 0x10_0000,
                    memsz: text.len() as u64,
                    bytes: text,
                }],
                &[(IMAGE_END_SYMBOL, 0x10_3000)],
            )
        };
        let g = guest_bytes();
        let build = |elf: Vec<u8>| build_image(&elf, &[], &[], &guest(&g));

        assert_eq!(
            build(stub_with(vec![0; 32], 0)),
            Err(ImageError::NoMultibootHeader)
        );
        // Beyond the first 8 KiB: not found.
        let far = multiboot_header(0x2000, MULTIBOOT_AOUT_KLUDGE, 0x10_0000);
        assert_eq!(
            build(stub_with(far, 0x2000)),
            Err(ImageError::NoMultibootHeader)
        );
        // Misaligned: not found.
        let odd = multiboot_header(2, MULTIBOOT_AOUT_KLUDGE, 0x10_0000);
        assert_eq!(build(stub_with(odd, 2)), Err(ImageError::NoMultibootHeader));

        let mut bad = multiboot_header(0, MULTIBOOT_AOUT_KLUDGE, 0x10_0000);
        bad[8] ^= 1;
        assert!(matches!(
            build(stub_with(bad, 0)),
            Err(ImageError::MultibootChecksum { offset: 0, .. })
        ));

        let no_kludge = multiboot_header(0, 3, 0x10_0000);
        assert_eq!(
            build(stub_with(no_kludge, 0)),
            Err(ImageError::MultibootNoAddressFields { flags: 3 })
        );

        let wrong_header_addr = multiboot_header(0x10, MULTIBOOT_AOUT_KLUDGE, 0x10_0000);
        assert!(matches!(
            build(stub_with(wrong_header_addr, 0)),
            Err(ImageError::MultibootAddress {
                field: "header_addr",
                ..
            })
        ));

        let entry_outside = multiboot_header(0, MULTIBOOT_AOUT_KLUDGE, 0x10_3000);
        assert!(matches!(
            build(stub_with(entry_outside, 0)),
            Err(ImageError::MultibootEntryOutside {
                entry: 0x10_3000,
                ..
            })
        ));
    }

    #[test]
    fn stub_errors() {
        let g = guest_bytes();
        let hdr = multiboot_header(0, MULTIBOOT_AOUT_KLUDGE, 0x10_0000);
        let seg = |paddr: u64, memsz: u64| Seg {
            paddr,
            bytes: hdr.clone(),
            memsz,
        };
        let build = |elf: Vec<u8>| build_image(&elf, &[], &[], &guest(&g));

        assert!(matches!(
            build(b"MZ not an elf".to_vec()),
            Err(ImageError::StubNotElf(_))
        ));
        assert_eq!(
            build(synthetic_elf(&[seg(0x10_0000, 32)], &[])),
            Err(ImageError::NoImageEnd)
        );
        assert_eq!(
            build(synthetic_elf(
                &[seg(0x10_0000, 32)],
                &[(IMAGE_END_SYMBOL, 0x10_0800)]
            )),
            Err(ImageError::BadImageEnd(0x10_0800))
        );
        assert!(matches!(
            build(synthetic_elf(
                &[seg(0x10_0000, 32), seg(0xF_F000, 32)],
                &[(IMAGE_END_SYMBOL, 0x10_1000)]
            )),
            Err(ImageError::SegmentOutside {
                paddr: 0xF_F000,
                ..
            })
        ));
        // .bss running past __image_end.
        assert!(matches!(
            build(synthetic_elf(
                &[seg(0x10_0000, 0x1001)],
                &[(IMAGE_END_SYMBOL, 0x10_1000)]
            )),
            Err(ImageError::SegmentOutside { .. })
        ));
    }

    #[test]
    fn payload_errors() {
        let g = guest_bytes();
        let stub = good_stub();
        let server = server_elf();
        let task = TaskInput {
            name: "vmm-server",
            rights: Rights::default(),
            elf: &server,
        };
        assert_eq!(
            build_image(&stub, &vec![task.clone(); MAX_TASKS + 1], &[], &guest(&g)),
            Err(ImageError::TooManyTasks(MAX_TASKS + 1))
        );
        assert!(build_image(&stub, &vec![task.clone(); MAX_TASKS], &[], &guest(&g)).is_ok());
        let stubs_port = TaskInput {
            rights: Rights {
                ports: heapless::Vec::from_slice(&[ipc_proto::manifest::PortRange {
                    first: 0x3f8,
                    last: 0x3f8,
                }])
                .unwrap(),
                ..Rights::default()
            },
            ..task.clone()
        };
        assert!(matches!(
            build_image(&stub, &[stubs_port], &[], &guest(&g)),
            Err(ImageError::BadRights(_))
        ));
        let not_elf = TaskInput {
            name: "vmm-server",
            rights: Rights::default(),
            elf: b"#!/bin/sh",
        };
        assert!(matches!(
            build_image(&stub, &[not_elf], &[], &guest(&g)),
            Err(ImageError::TaskNotElf { .. })
        ));
        for ram_mib in [0, 3] {
            let bad = GuestInput {
                ram_mib,
                ..guest(&g)
            };
            assert_eq!(
                build_image(&stub, &[], &[], &bad),
                Err(ImageError::BadGuestRam(ram_mib))
            );
        }
        let high = GuestInput {
            load_gpa: (16 << 20) - 100,
            ..guest(&g)
        };
        assert!(matches!(
            build_image(&stub, &[], &[], &high),
            Err(ImageError::GuestOutsideRam { .. })
        ));
    }

    #[test]
    fn blobs_follow_the_manifest_page_by_page() {
        let server = server_elf();
        let tasks = vec![
            TaskInput {
                name: "vmm-server",
                rights: Rights::default(),
                elf: &server,
            };
            MAX_TASKS
        ];
        let g = guest_bytes();
        let (manifest, offsets) = layout(&tasks, &[], &guest(&g)).unwrap();
        assert!(PAYLOAD_HEADER_LEN + manifest.len() <= offsets[0]);
        for w in offsets.windows(2) {
            assert_eq!(w[1] - w[0], align_up(server.len(), PAGE_SIZE));
        }
    }

    #[test]
    fn every_error_says_something() {
        let errors = [
            ImageError::NoImageEnd,
            ImageError::NoMultibootHeader,
            ImageError::ManifestTooLarge(5000),
            ImageError::BlobTooLarge {
                what: "the guest image".into(),
                len: 1 << 33,
            },
        ];
        for e in errors {
            assert!(e.to_string().len() > 20, "{e}");
        }
    }
}
