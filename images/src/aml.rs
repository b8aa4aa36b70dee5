//! Just enough of an AML encoder for the DSDT (ACPI 6.5 §20.2, "AML
//! Grammar Definition") and of the resource descriptors its `_CRS` and
//! `_PRS` buffers hold (§6.4). Each function returns the bytes of one term;
//! callers concatenate them. Names are single 4-character `NameSeg`s
//! (padded with `_`), except [`scope`]'s, which may start with the root
//! character `\`.

/// `PkgLength` (§20.2.4) for `content` bytes that follow it: the encoded
/// length counts its own bytes too. One byte up to 63; then bits 7-6 of
/// the lead byte give the bytes that follow (1 to 3), its bits 3-0 the low
/// nibble, each following byte the next 8 bits.
///
/// # Panics
///
/// At 2^28 bytes or more, which AML cannot encode (nothing here comes near).
pub fn pkg_length(content: usize) -> Vec<u8> {
    if content < 0x3f {
        return vec![(content + 1) as u8];
    }
    for extra in 1..=3usize {
        let total = content + 1 + extra;
        if total < 1 << (4 + 8 * extra) {
            let mut v = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            v.extend((0..extra).map(|i| (total >> (4 + 8 * i)) as u8));
            return v;
        }
    }
    panic!("an AML package of {content} bytes is too long to encode");
}

/// `op PkgLength body`, the form of every term that carries a length.
fn with_length(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = op.to_vec();
    v.extend(pkg_length(body.len()));
    v.extend_from_slice(body);
    v
}

/// An integer in the shortest encoding: `ZeroOp`, `OneOp`, or a
/// `ByteConst`/`WordConst`/`DWordConst`/`QWordConst` (§20.2.3).
pub fn integer(n: u64) -> Vec<u8> {
    match n {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xff => vec![0x0a, n as u8],
        0x100..=0xffff => [&[0x0b][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0x0c][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[0x0e][..], &n.to_le_bytes()].concat(),
    }
}

/// `DefName := NameOp NameString DataRefObject`: `Name (seg, value)`.
pub fn name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
    [&[0x08][..], seg, value].concat()
}

/// `DefScope := ScopeOp PkgLength NameString TermList`.
pub fn scope(path: &[u8], terms: &[u8]) -> Vec<u8> {
    with_length(&[0x10], &[path, terms].concat())
}

/// `DefDevice := DeviceOp (ExtOpPrefix 0x82) PkgLength NameString TermList`.
pub fn device(seg: &[u8; 4], terms: &[u8]) -> Vec<u8> {
    with_length(&[0x5b, 0x82], &[seg, terms].concat())
}

/// `DefMethod := MethodOp PkgLength NameString MethodFlags TermList`:
/// a not serialized method of `args` (0 to 7) arguments, sync level 0.
pub fn method(seg: &[u8; 4], args: u8, terms: &[u8]) -> Vec<u8> {
    assert!(args <= 7, "AML methods take at most 7 arguments");
    with_length(&[0x14], &[seg, &[args][..], terms].concat())
}

/// `DefPackage := PackageOp PkgLength NumElements PackageElementList`.
///
/// # Panics
///
/// With more than 255 elements (that needs `VarPackageOp`).
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let n = u8::try_from(elements.len()).expect("at most 255 package elements");
    with_length(&[0x12], &[&[n][..], &elements.concat()].concat())
}

/// `DefBuffer := BufferOp PkgLength BufferSize ByteList`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    with_length(
        &[0x11],
        &[integer(bytes.len() as u64), bytes.to_vec()].concat(),
    )
}

/// A `ResourceTemplate ()`: a buffer of `descriptors` closed by the End
/// Tag (§6.4.2.9; checksum 0, "treated as if the checksum operation
/// succeeded").
pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
    buffer(&[descriptors.concat(), vec![0x79, 0x00]].concat())
}

/// The compressed EISA ID of a `PNPxxxx`-style name (`EisaId ()` in ASL,
/// §6.1.5): three letters of 5 bits each ('A' = 1) then four hex digits,
/// stored big-endian in a DWORD.
///
/// # Panics
///
/// If `id` is not three capital letters and four hex digits.
pub const fn eisa_id(id: &[u8; 7]) -> u32 {
    let mut v: u32 = 0;
    let mut i = 0;
    while i < 3 {
        assert!(
            id[i].is_ascii_uppercase(),
            "an EISA ID starts with 3 capitals"
        );
        v = (v << 5) | (id[i] - b'@') as u32;
        i += 1;
    }
    while i < 7 {
        let d = match id[i] {
            b'0'..=b'9' => id[i] - b'0',
            b'A'..=b'F' => id[i] - b'A' + 10,
            _ => panic!("an EISA ID ends with 4 hex digits"),
        };
        v = (v << 4) | d as u32;
        i += 1;
    }
    v.swap_bytes()
}

/// General flags of an address space descriptor that a bridge produces
/// (§6.4.3.5.2, table 6.44): `_MAF` and `_MIF` set (the range is fixed),
/// positive decode, bit 0 clear ("produces and consumes").
const PRODUCER_FIXED: u8 = 0b1100;

/// `WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0,
/// first, last, 0, count)`: Word Address Space Descriptor (§6.4.3.5.3),
/// resource type 2 (bus number range).
pub fn word_bus_number(first: u16, last: u16) -> Vec<u8> {
    let mut v = vec![0x88, 13, 0, 2, PRODUCER_FIXED, 0];
    for w in [0, first, last, 0, last - first + 1] {
        v.extend(w.to_le_bytes());
    }
    v
}

/// `IO (Decode16, base, base, 1, len)`: I/O Port Descriptor (§6.4.2.5) of
/// a fixed range the device consumes.
pub fn io(base: u16, len: u8) -> Vec<u8> {
    let [lo, hi] = base.to_le_bytes();
    vec![0x47, 0x01, lo, hi, lo, hi, 1, len]
}

/// `DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed,
/// NonCacheable, ReadWrite, 0, base, base + len - 1, 0, len)`: DWord
/// Address Space Descriptor (§6.4.3.5.2), resource type 0 (memory), type
/// specific flags 1 (read-write, non-cacheable: `_MEM` 0).
///
/// # Panics
///
/// If the range is empty or ends past 4 GiB.
pub fn dword_memory(base: u32, len: u32) -> Vec<u8> {
    let last = len
        .checked_sub(1)
        .and_then(|l| base.checked_add(l))
        .expect("a non-empty range below 4 GiB");
    let mut v = vec![0x87, 23, 0, 0, PRODUCER_FIXED, 0x01];
    for d in [0, base, last, 0, len] {
        v.extend(d.to_le_bytes());
    }
    v
}

/// `Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) { gsi }`:
/// Extended Interrupt Descriptor (§6.4.3.6), flags bit 0 consumer, bit 1
/// clear (level), bit 2 clear (active high), bit 3 clear (exclusive).
pub fn interrupt_level_high(gsi: u32) -> Vec<u8> {
    let mut v = vec![0x89, 6, 0, 0x01, 1];
    v.extend(gsi.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_uses_one_to_four_bytes() {
        assert_eq!(pkg_length(0), [1]);
        assert_eq!(pkg_length(62), [63]);
        // 63 bytes + 2 of PkgLength = 65 = 0x41: lead 0x41 (1 byte follows,
        // low nibble 1), then 0x04.
        assert_eq!(pkg_length(63), [0x41, 0x04]);
        assert_eq!(pkg_length(0xffd), [0x4f, 0xff]);
        assert_eq!(pkg_length(0xffe), [0x81, 0x00, 0x01]);
    }

    #[test]
    fn integers_take_the_shortest_form() {
        assert_eq!(integer(0), [0]);
        assert_eq!(integer(1), [1]);
        assert_eq!(integer(0xff), [0x0a, 0xff]);
        assert_eq!(integer(0x100), [0x0b, 0, 1]);
        assert_eq!(integer(0x0003_ffff), [0x0c, 0xff, 0xff, 3, 0]);
        assert_eq!(integer(1 << 32)[0], 0x0e);
    }

    #[test]
    fn eisa_ids_match_what_iasl_makes() {
        // iasl compiles EisaId ("PNP0A03") to 0x030AD041.
        assert_eq!(eisa_id(b"PNP0A03"), 0x030A_D041);
        assert_eq!(eisa_id(b"PNP0C0F"), 0x0F0C_D041);
    }

    #[test]
    fn descriptors_have_their_fixed_lengths() {
        assert_eq!(word_bus_number(0, 0).len(), 3 + 13);
        assert_eq!(dword_memory(0xfe00_0000, 0x10_0000).len(), 3 + 23);
        assert_eq!(interrupt_level_high(10).len(), 3 + 6);
        assert_eq!(io(0xcf8, 8), [0x47, 1, 0xf8, 0xc, 0xf8, 0xc, 1, 8]);
        let rt = resource_template(&[io(0xcf8, 8)]);
        assert_eq!(rt[..4], [0x11, 13, 0x0a, 10]);
        assert_eq!(rt[rt.len() - 2..], [0x79, 0]);
    }
}
