//! The disk-driver server as a library: block requests
//! ([`ipc_proto::block`]) served from the machine's IDE disk by ATA PIO
//! (crate `ata`), with the data moved straight between the disk's Data
//! register and guest RAM -- `rep insd` into the guest's buffers, `rep
//! outsd` out of them, no bounce buffer (zero copy). A request names one
//! buffer or a scatter list of up to 254 ([`ipc_proto::block::Request`]),
//! moved in one ATA command; a segment may end inside a sector.
//!
//! Nothing here touches the machine: the ring-3 binary (`src/main.rs`)
//! supplies port I/O ([`ata::PortIo`]), the wait ([`ata::Wait`]), guest
//! RAM ([`GuestMemory`]) and the channel ([`Transport`]); the tests supply
//! `ata::model`'s disk and a `Vec` for RAM.
//!
//! ```
//! use ata::model::Device;
//! use ata::{Ata, Drive, Spin, PRIMARY};
//! use disk_driver::{DiskServer, Ram};
//! use ipc_proto::block::{op, status, BlockRequest};
//!
//! let ata = Ata::new(Device::disk(2048), Spin::new(1000), PRIMARY, Drive::Master);
//! let mut server = DiskServer::start(ata, false);
//! assert_eq!(
//!     server.console_line().to_string(),
//!     "disk: QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported"
//! );
//! let mut ram = vec![0xaau8; 4096];
//! let read = BlockRequest { op: op::READ, sectors: 2, lba: 7, gpa: 1024 };
//! let reply = server.handle(&read, &mut Ram(&mut ram));
//! assert_eq!((reply.status, reply.sectors), (status::OK, 2));
//! assert!(ram[1024..2048].iter().all(|&b| b == 0));
//! ```
#![no_std]
#![deny(missing_docs)]

use core::fmt;

use ata::{Ata, DiskInfo, Flush, PortIo, Sink, Source, Wait, SECTOR_SIZE};
use ipc_proto::block::{flags, op, status, BlockReply, BlockRequest, Parsed, Request, Segment};
use ipc_proto::PAGE_SIZE;
use zerocopy::IntoBytes;

/// Guest RAM as the server sees it.
pub trait GuestMemory {
    /// The `len` bytes of guest RAM from guest-physical `gpa`, if they are
    /// all guest RAM.
    fn bytes_mut(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]>;

    /// `len` bytes at `gpa` were written (a READ's buffer, also when the
    /// read failed part-way): the ring-3 task tells the shadow MMU
    /// (`ipc_proto::guest_writes`). The default: nobody to tell.
    fn wrote(&mut self, gpa: u64, len: u64) {
        let _ = (gpa, len);
    }
}

/// Guest RAM as one slice from guest-physical 0: what the ring-3 task has
/// mapped at `layout::GUEST_RAM_WINDOW`, or a test's `Vec`.
pub struct Ram<'a>(pub &'a mut [u8]);

impl GuestMemory for Ram<'_> {
    fn bytes_mut(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        self.0.get_mut(start..end)
    }
}

/// The bytes in front of the ring-3 task's configuration byte: the image
/// builder finds them in the ELF and sets the byte after them
/// ([`CONFIG_READ_ONLY`]), as `splitvisor attack` configures its hostile
/// servers, since the manifest has no per-task arguments.
pub const CONFIG_MAGIC: [u8; 12] = *b"SVDISKCONFIG";

/// The configuration byte's bit for a disk attached read-only (`--disk
/// FILE,ro`).
pub const CONFIG_READ_ONLY: u8 = 1;

/// The configuration byte's bit for the self-test at start ([`self_test`]):
/// for the end-to-end tests only, since it writes the disk's last sector.
pub const CONFIG_SELF_TEST: u8 = 2;

/// What a self-test writes into the disk's last sector, repeated.
pub const SELF_TEST_PATTERN: &[u8; 32] = b"splitvisor disk-driver was here\n";

/// A copy of a request's page: the [`BlockRequest`] or
/// [`ipc_proto::block::ListRequest`] and its segments.
pub type RequestPage = [u8; PAGE_SIZE as usize];

/// `req` as the page a client would have written.
pub fn request_page(req: &BlockRequest) -> RequestPage {
    let mut page = [0u8; PAGE_SIZE as usize];
    page[..core::mem::size_of::<BlockRequest>()].copy_from_slice(req.as_bytes());
    page
}

/// The channel, as the platform offers it.
pub trait Transport {
    /// Answers the pending request with `reply` (none the first time) and
    /// waits for the next, copied out of the channel page (the client
    /// cannot change it while it is served); `None` ends the loop (tests,
    /// or a channel the platform closed).
    fn reply_recv(&mut self, reply: Option<&BlockReply>) -> Option<RequestPage>;
}

/// A request's segments in guest RAM as one byte stream, for the ATA
/// driver ([`Sink`], [`Source`]): byte `at` of the transfer is in the
/// segment whose lengths before it add up to at most `at`.
struct Segments<'a, G> {
    ram: &'a mut G,
    segs: &'a [Segment],
    /// The segment the last chunk came from and its first byte's offset
    /// in the stream (the driver asks in order, so the search resumes).
    cursor: (usize, usize),
}

impl<G: GuestMemory> Segments<'_, G> {
    /// The guest address and bytes left of the segment holding byte `at`.
    fn locate(&mut self, at: usize) -> Option<(u64, usize)> {
        let (mut i, mut base) = self.cursor;
        if at < base {
            (i, base) = (0, 0);
        }
        while let Some(s) = self.segs.get(i) {
            let len = s.len as usize;
            if at < base + len {
                self.cursor = (i, base);
                let off = at - base;
                return Some((s.gpa + off as u64, len - off));
            }
            base += len;
            i += 1;
        }
        None
    }
}

impl<G: GuestMemory> Sink for Segments<'_, G> {
    fn chunk_mut(&mut self, at: usize, max: usize) -> Option<&mut [u8]> {
        let (gpa, left) = self.locate(at)?;
        self.ram
            .bytes_mut(gpa, left.min(max))
            .filter(|c| !c.is_empty())
    }
}

impl<G: GuestMemory> Source for Segments<'_, G> {
    fn chunk(&mut self, at: usize, max: usize) -> Option<&[u8]> {
        let (gpa, left) = self.locate(at)?;
        self.ram
            .bytes_mut(gpa, left.min(max))
            .filter(|c| !c.is_empty())
            .map(|c| &*c)
    }
}

/// The server: the disk, what IDENTIFY DEVICE said of it, or why there is
/// no usable disk.
pub struct DiskServer<P, W> {
    ata: Ata<P, W>,
    disk: Result<DiskInfo, ata::Error>,
    read_only: bool,
}

/// The line the server prints at start: `disk: MODEL, N sectors (SIZE),
/// write cache flush supported`, or `disk: no usable disk: REASON`.
pub struct ConsoleLine<'a>(&'a Result<DiskInfo, ata::Error>, bool);

impl fmt::Display for ConsoleLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(info) => {
                write!(f, "disk: {info}")?;
                if self.1 {
                    f.write_str(", read-only")?;
                }
                Ok(())
            }
            Err(e) => write!(f, "disk: no usable disk: {e}"),
        }
    }
}

/// A reply with `status` and nothing else.
fn reply(status: u32) -> BlockReply {
    BlockReply {
        status,
        ..BlockReply::default()
    }
}

impl<P: PortIo, W: Wait> DiskServer<P, W> {
    /// Identifies the disk (IDENTIFY DEVICE); a disk that does not answer
    /// leaves a server that answers every request [`status::NO_DISK`].
    /// `read_only`: refuse writes (`--disk FILE,ro`).
    pub fn start(mut ata: Ata<P, W>, read_only: bool) -> Self {
        let disk = ata.identify();
        Self {
            ata,
            disk,
            read_only,
        }
    }

    /// What the disk is, for the console at start.
    pub fn console_line(&self) -> ConsoleLine<'_> {
        ConsoleLine(&self.disk, self.read_only)
    }

    /// The identified disk.
    pub fn info(&self) -> Option<&DiskInfo> {
        self.disk.as_ref().ok()
    }

    /// The driver.
    pub fn ata(&mut self) -> &mut Ata<P, W> {
        &mut self.ata
    }

    /// Serves one request of one buffer (or FLUSH, INFO).
    pub fn handle(&mut self, req: &BlockRequest, ram: &mut impl GuestMemory) -> BlockReply {
        self.handle_page(&request_page(req), ram)
    }

    /// Serves the request on `page` (a copy of the channel page): any
    /// [`BlockRequest`], or a scatter list.
    pub fn handle_page(&mut self, page: &[u8], ram: &mut impl GuestMemory) -> BlockReply {
        let Ok(info) = self.disk else {
            return reply(status::NO_DISK);
        };
        let req = match Request::parse(page) {
            Ok(Parsed::Transfer(r)) => return self.transfer(&r, &info, ram),
            Ok(Parsed::Other(req)) => req,
            Err(s) => return reply(s),
        };
        match req.op {
            op::INFO => BlockReply {
                status: status::OK,
                flags: if info.flush == Flush::None {
                    0
                } else {
                    flags::FLUSH
                } | if self.read_only { flags::READ_ONLY } else { 0 },
                capacity: info.sectors,
                ..BlockReply::default()
            },
            op::FLUSH if self.read_only => reply(status::OK),
            op::FLUSH => match self.ata.flush() {
                Ok(()) => reply(status::OK),
                Err(e) => self.failed(&req, e),
            },
            _ => reply(status::UNSUPPORTED),
        }
    }

    fn transfer(
        &mut self,
        req: &Request,
        info: &DiskInfo,
        ram: &mut impl GuestMemory,
    ) -> BlockReply {
        if req.op == op::WRITE && self.read_only {
            return reply(status::READ_ONLY);
        }
        // `Request::parse` checked 1..=MAX_SECTORS sectors and segments
        // that add up to them; the disk's end and guest RAM are checked
        // here.
        if req
            .lba
            .checked_add(u64::from(req.sectors))
            .is_none_or(|end| end > info.sectors)
        {
            return reply(status::OUT_OF_RANGE);
        }
        let segs = req.segments();
        if segs
            .iter()
            .any(|s| ram.bytes_mut(s.gpa, s.len as usize).is_none())
        {
            return reply(status::BAD_BUFFER);
        }
        // At most MAX_SECTORS x 512 bytes: fits any usize.
        let len = req.sectors as usize * SECTOR_SIZE;
        let mut stream = Segments {
            ram,
            segs,
            cursor: (0, 0),
        };
        let done = if req.op == op::READ {
            let done = self.ata.read_into(req.lba, len, &mut stream);
            for s in segs {
                ram.wrote(s.gpa, u64::from(s.len));
            }
            done
        } else {
            self.ata.write_from(req.lba, len, &mut stream)
        };
        match done {
            Ok(()) => BlockReply {
                status: status::OK,
                sectors: req.sectors,
                ..BlockReply::default()
            },
            Err(e) => self.failed(req, e),
        }
    }

    /// The reply for a driver error; after a timeout or a broken
    /// protocol, a software reset so that the next request has a chance.
    fn failed(&mut self, req: &impl Moved, e: ata::Error) -> BlockReply {
        let (first, sectors) = req.span();
        let moved = |lba: u64| {
            u32::try_from(lba.saturating_sub(first))
                .unwrap_or(0)
                .min(sectors)
        };
        let io_error = |ata_status: u8, ata_error: u8, sectors: u32| BlockReply {
            status: status::IO_ERROR,
            ata_status,
            ata_error,
            sectors,
            ..BlockReply::default()
        };
        match e {
            ata::Error::Device {
                lba,
                status: s,
                error,
                ..
            } => io_error(s, error, moved(lba)),
            ata::Error::Fault { lba, status: s, .. } => io_error(s, 0, moved(lba)),
            ata::Error::Timeout { status: s, .. } => {
                let _ = self.ata.reset();
                io_error(s, 0, 0)
            }
            ata::Error::Protocol { lba, status: s, .. } => {
                let _ = self.ata.reset();
                io_error(s, 0, moved(lba))
            }
            ata::Error::OutOfRange { .. } | ata::Error::BadLength { .. } => {
                reply(status::OUT_OF_RANGE)
            }
            ata::Error::FlushUnsupported => reply(status::UNSUPPORTED),
            ata::Error::NoDevice { .. }
            | ata::Error::NotAta { .. }
            | ata::Error::NoLba
            | ata::Error::NotIdentified => reply(status::NO_DISK),
        }
    }

    /// The request loop: answer, wait, serve, until the transport ends it.
    pub fn serve(&mut self, transport: &mut impl Transport, ram: &mut impl GuestMemory) {
        self.serve_after(transport, ram, None);
    }

    /// [`DiskServer::serve`] with `last` the reply to a request the
    /// transport handed out before (sent first).
    pub fn serve_after(
        &mut self,
        transport: &mut impl Transport,
        ram: &mut impl GuestMemory,
        mut last: Option<BlockReply>,
    ) {
        while let Some(page) = transport.reply_recv(last.as_ref()) {
            last = Some(self.handle_page(&page, ram));
        }
    }
}

/// The sectors a failed request asked for: (first, how many).
trait Moved {
    fn span(&self) -> (u64, u32);
}

impl Moved for BlockRequest {
    fn span(&self) -> (u64, u32) {
        (self.lba, self.sectors)
    }
}

impl Moved for Request {
    fn span(&self) -> (u64, u32) {
        (self.lba, self.sectors)
    }
}

/// The end-to-end tests' self-test, through the same requests a client
/// makes: READ sector 0 into guest RAM at `gpa` (4 KiB the guest does not
/// use) and show its first 16 bytes, then WRITE [`SELF_TEST_PATTERN`]
/// over the last sector, FLUSH, READ it back and compare. One line each
/// on `out`, starting `disk: self-test: `.
pub fn self_test<P: PortIo, W: Wait>(
    server: &mut DiskServer<P, W>,
    ram: &mut impl GuestMemory,
    gpa: u64,
    out: &mut impl fmt::Write,
) -> fmt::Result {
    let one = |op, lba| BlockRequest {
        op,
        sectors: 1,
        lba,
        gpa,
    };
    let info = server.handle(
        &BlockRequest {
            op: op::INFO,
            ..BlockRequest::default()
        },
        ram,
    );
    if info.status != status::OK {
        return writeln!(out, "disk: self-test: INFO answered status {}", info.status);
    }
    let r = server.handle(&one(op::READ, 0), ram);
    if r.status != status::OK {
        return writeln!(
            out,
            "disk: self-test: reading sector 0: status {}",
            r.status
        );
    }
    let Some(sector) = ram.bytes_mut(gpa, SECTOR_SIZE) else {
        return writeln!(out, "disk: self-test: no guest RAM at {gpa:#x}");
    };
    out.write_str("disk: self-test: sector 0 begins \"")?;
    for &b in &sector[..16] {
        let c = if b.is_ascii_graphic() || b == b' ' {
            char::from(b)
        } else {
            '.'
        };
        out.write_char(c)?;
    }
    out.write_str("\"\n")?;
    let last = info.capacity - 1;
    for (i, b) in sector.iter_mut().enumerate() {
        *b = SELF_TEST_PATTERN[i % SELF_TEST_PATTERN.len()];
    }
    let w = server.handle(&one(op::WRITE, last), ram);
    if w.status != status::OK {
        return writeln!(
            out,
            "disk: self-test: writing sector {last}: status {}",
            w.status
        );
    }
    let f = server.handle(
        &BlockRequest {
            op: op::FLUSH,
            ..BlockRequest::default()
        },
        ram,
    );
    if f.status != status::OK {
        return writeln!(out, "disk: self-test: FLUSH: status {}", f.status);
    }
    if let Some(sector) = ram.bytes_mut(gpa, SECTOR_SIZE) {
        sector.fill(0);
    }
    let r = server.handle(&one(op::READ, last), ram);
    let same = ram.bytes_mut(gpa, SECTOR_SIZE).is_some_and(|s| {
        s.iter()
            .enumerate()
            .all(|(i, &b)| b == SELF_TEST_PATTERN[i % SELF_TEST_PATTERN.len()])
    });
    if r.status != status::OK || !same {
        return writeln!(
            out,
            "disk: self-test: sector {last} read back wrong (status {})",
            r.status
        );
    }
    writeln!(
        out,
        "disk: self-test: wrote, flushed and read back sector {last}"
    )
}

#[cfg(test)]
mod tests;
