//! Reading the few things the builder needs from an ELF executable: its
//! loadable segments by *physical* address (`p_paddr`), one symbol's value
//! and the entry point. 32-bit (the test guests) and 64-bit (the stub and
//! the servers) files are both accepted.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, Sym};
use object::Endianness;

/// One `PT_LOAD` program header and the file bytes it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment<'a> {
    /// Physical load address (`p_paddr`).
    pub paddr: u64,
    /// Virtual address (`p_vaddr`): what `e_entry` may be given in.
    pub vaddr: u64,
    /// Bytes in memory (`p_memsz`); the part past `bytes` is zero-filled.
    pub memsz: u64,
    /// The `p_filesz` bytes from the file.
    pub bytes: &'a [u8],
}

/// What was wrong with an ELF file, in `object`'s words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfError(pub String);

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<object::read::Error> for ElfError {
    fn from(e: object::read::Error) -> Self {
        ElfError(e.to_string())
    }
}

/// An ELF executable, 32- or 64-bit, little-endian.
pub struct ElfImage<'a> {
    /// The loadable segments, in program-header order.
    pub segments: Vec<LoadSegment<'a>>,
    /// `e_entry`.
    pub entry: u64,
    symbols: Vec<(&'a [u8], u64)>,
}

impl<'a> ElfImage<'a> {
    /// Parses `data`; fails on anything that is not a readable ELF file.
    pub fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        if data.len() < 5 || &data[..4] != b"\x7fELF" {
            return Err(ElfError("not an ELF file (no \\x7fELF magic)".into()));
        }
        match data[4] {
            1 => parse_as::<elf::FileHeader32<Endianness>>(data),
            2 => parse_as::<elf::FileHeader64<Endianness>>(data),
            c => Err(ElfError(format!("unknown ELF class {c}"))),
        }
    }

    /// The value of the symbol `name` in the static symbol table.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| *v)
    }
}

fn parse_as<'a, Elf: FileHeader<Endian = Endianness>>(
    data: &'a [u8],
) -> Result<ElfImage<'a>, ElfError> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let mut segments = Vec::new();
    for ph in header.program_headers(endian, data)? {
        if ph.p_type(endian) != elf::PT_LOAD {
            continue;
        }
        let bytes = ph
            .data(endian, data)
            .map_err(|()| ElfError("a PT_LOAD segment lies outside the file".into()))?;
        segments.push(LoadSegment {
            paddr: ph.p_paddr(endian).into(),
            vaddr: ph.p_vaddr(endian).into(),
            memsz: ph.p_memsz(endian).into(),
            bytes,
        });
    }
    let sections = header.sections(endian, data)?;
    let table = sections.symbols(endian, data, elf::SHT_SYMTAB)?;
    let mut symbols = Vec::new();
    for sym in table.iter() {
        let name = table.symbol_name(endian, sym)?;
        if !name.is_empty() {
            symbols.push((name, sym.st_value(endian).into()));
        }
    }
    Ok(ElfImage {
        segments,
        entry: header.e_entry(endian).into(),
        symbols,
    })
}
