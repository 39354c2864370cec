//! The BER subset SNMP v1/v2c uses (X.690 definite-length encodings), with no allocation.
//!
//! Hand-written rather than `rasn`: `rasn` needs an allocator, and an SNMP agent only needs
//! single-byte tags, definite lengths (short and long form), INTEGER, OCTET STRING, NULL and
//! OBJECT IDENTIFIER. Decoding is a [`Reader`] over a borrowed slice that returns views into it;
//! encoding is a [`Writer`] that writes forward into a caller's buffer and inserts each
//! constructed value's header when the value is closed, so lengths are always minimal and a value
//! that does not fit is reported as [`BerError::BufferFull`] instead of being cut.
use core::cmp::Ordering;
use core::fmt;

/// INTEGER.
pub const TAG_INTEGER: u8 = 0x02;
/// OCTET STRING.
pub const TAG_OCTET_STRING: u8 = 0x04;
/// NULL.
pub const TAG_NULL: u8 = 0x05;
/// OBJECT IDENTIFIER.
pub const TAG_OID: u8 = 0x06;
/// SEQUENCE (constructed).
pub const TAG_SEQUENCE: u8 = 0x30;
/// IpAddress (application 0).
pub const TAG_IP_ADDRESS: u8 = 0x40;
/// Counter32 (application 1).
pub const TAG_COUNTER32: u8 = 0x41;
/// Gauge32 / Unsigned32 (application 2).
pub const TAG_GAUGE32: u8 = 0x42;
/// TimeTicks (application 3).
pub const TAG_TIMETICKS: u8 = 0x43;
/// Opaque (application 4).
pub const TAG_OPAQUE: u8 = 0x44;
/// Counter64 (application 6).
pub const TAG_COUNTER64: u8 = 0x46;
/// v2c varbind exception `noSuchObject` (context 0, primitive, empty).
pub const TAG_NO_SUCH_OBJECT: u8 = 0x80;
/// v2c varbind exception `noSuchInstance` (context 1).
pub const TAG_NO_SUCH_INSTANCE: u8 = 0x81;
/// v2c varbind exception `endOfMibView` (context 2).
pub const TAG_END_OF_MIB_VIEW: u8 = 0x82;

/// Most sub-identifiers an [`Oid`] keeps. Longer names are kept truncated and flagged, which
/// orders them correctly against every object of this agent (none is longer than 12 arcs).
pub const MAX_OID_ARCS: usize = 32;

/// Largest buffer the [`Writer`] uses; longer buffers are used only up to this size, so every
/// length fits the three-byte long form `0x82 hi lo`.
pub const MAX_ENCODED_LEN: usize = 0xFFFF;

/// Worst-case header of a constructed value the [`Writer`] reserves while it is open: one tag
/// byte plus `0x82 hi lo`.
const MAX_HEADER: usize = 4;

/// A BER decoding or encoding failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BerError {
    /// The input ended inside a tag, length or value.
    Truncated,
    /// A tag number ≥ 31 (multi-byte tag form): never used by SNMP.
    HighTagNumber,
    /// Indefinite length (`0x80`): forbidden in SNMP.
    IndefiniteLength,
    /// A long-form length of more than four bytes, or one that overflows.
    LengthTooLong,
    /// A different tag was expected here.
    UnexpectedTag {
        /// The tag required at this position.
        expected: u8,
        /// The tag found.
        found: u8,
    },
    /// An INTEGER that is empty or does not fit the target type.
    BadInteger,
    /// An OBJECT IDENTIFIER that is empty, ends inside a sub-identifier, has a redundant
    /// leading `0x80`, or a sub-identifier above 2^32−1.
    BadOid,
    /// Bytes left over after the last expected value.
    TrailingData,
    /// NULL with content.
    BadNull,
    /// The output buffer is too small for the value.
    BufferFull,
}

impl fmt::Display for BerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BerError::Truncated => f.write_str("truncated BER value"),
            BerError::HighTagNumber => f.write_str("multi-byte BER tag"),
            BerError::IndefiniteLength => f.write_str("indefinite BER length"),
            BerError::LengthTooLong => f.write_str("BER length too long"),
            BerError::UnexpectedTag { expected, found } => {
                write!(f, "expected tag 0x{expected:02x}, found 0x{found:02x}")
            }
            BerError::BadInteger => f.write_str("malformed or oversized INTEGER"),
            BerError::BadOid => f.write_str("malformed OBJECT IDENTIFIER"),
            BerError::TrailingData => f.write_str("trailing bytes after BER value"),
            BerError::BadNull => f.write_str("NULL with content"),
            BerError::BufferFull => f.write_str("output buffer full"),
        }
    }
}

impl core::error::Error for BerError {}

/// One decoded tag-length-value, borrowing its content from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The (single-byte) tag.
    pub tag: u8,
    /// The content octets.
    pub content: &'a [u8],
}

/// A cursor that reads consecutive TLVs from a slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub const fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// Whether every byte has been consumed.
    pub const fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Read the next TLV.
    pub fn read(&mut self) -> Result<Tlv<'a>, BerError> {
        let (&tag, rest) = self.data.split_first().ok_or(BerError::Truncated)?;
        if tag & 0x1F == 0x1F {
            return Err(BerError::HighTagNumber);
        }
        let (&first, mut rest) = rest.split_first().ok_or(BerError::Truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else if first == 0x80 {
            return Err(BerError::IndefiniteLength);
        } else {
            let n = usize::from(first & 0x7F);
            if n > 4 {
                return Err(BerError::LengthTooLong);
            }
            let (bytes, after) = rest.split_at_checked(n).ok_or(BerError::Truncated)?;
            rest = after;
            let mut len: usize = 0;
            for &b in bytes {
                len = len
                    .checked_mul(256)
                    .and_then(|l| l.checked_add(usize::from(b)))
                    .ok_or(BerError::LengthTooLong)?;
            }
            len
        };
        let (content, after) = rest.split_at_checked(len).ok_or(BerError::Truncated)?;
        self.data = after;
        Ok(Tlv { tag, content })
    }

    /// Read the next TLV and require `tag`; return its content.
    pub fn expect(&mut self, tag: u8) -> Result<&'a [u8], BerError> {
        let tlv = self.read()?;
        if tlv.tag != tag {
            return Err(BerError::UnexpectedTag {
                expected: tag,
                found: tlv.tag,
            });
        }
        Ok(tlv.content)
    }

    /// Read an INTEGER that must fit an `i32`.
    pub fn read_i32(&mut self) -> Result<i32, BerError> {
        decode_i32(self.expect(TAG_INTEGER)?)
    }

    /// Require that nothing is left.
    pub fn finish(&self) -> Result<(), BerError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(BerError::TrailingData)
        }
    }
}

/// Decode INTEGER content (two's complement, big-endian) into an `i32`. Accepts one to four
/// content bytes; a five-byte form is accepted only when its first byte is a redundant sign
/// byte, since some managers encode large positive request-ids that way.
pub fn decode_i32(content: &[u8]) -> Result<i32, BerError> {
    let v = decode_i64_upto(content, 5)?;
    i32::try_from(v).map_err(|_| BerError::BadInteger)
}

/// Decode unsigned content (Counter32/Gauge32/TimeTicks) into a `u32`.
pub fn decode_u32(content: &[u8]) -> Result<u32, BerError> {
    let v = decode_i64_upto(content, 5)?;
    u32::try_from(v).map_err(|_| BerError::BadInteger)
}

fn decode_i64_upto(content: &[u8], max: usize) -> Result<i64, BerError> {
    let (&first, rest) = content.split_first().ok_or(BerError::BadInteger)?;
    if content.len() > max {
        return Err(BerError::BadInteger);
    }
    let mut v = i64::from(first as i8);
    for &b in rest {
        v = (v << 8) | i64::from(b);
    }
    Ok(v)
}

/// An OBJECT IDENTIFIER as its sub-identifiers, at most [`MAX_OID_ARCS`] kept.
///
/// Ordering is lexicographic on the arcs (what GetNext needs); a name truncated on decode sorts
/// right after its kept prefix, which is exact against every name shorter than the bound.
#[derive(Clone, Copy)]
pub struct Oid {
    arcs: [u32; MAX_OID_ARCS],
    len: u8,
    truncated: bool,
}

impl Oid {
    /// The empty name (sorts before everything).
    pub const EMPTY: Oid = Oid {
        arcs: [0; MAX_OID_ARCS],
        len: 0,
        truncated: false,
    };

    /// From arcs; `None` when longer than [`MAX_OID_ARCS`].
    pub fn from_arcs(arcs: &[u32]) -> Option<Oid> {
        let mut oid = Oid::EMPTY;
        for &a in arcs {
            oid.push(a).ok()?;
        }
        Some(oid)
    }

    /// Append a sub-identifier.
    pub fn push(&mut self, arc: u32) -> Result<(), BerError> {
        let slot = self
            .arcs
            .get_mut(usize::from(self.len))
            .ok_or(BerError::BadOid)?;
        *slot = arc;
        self.len += 1;
        Ok(())
    }

    /// The sub-identifiers kept.
    pub fn arcs(&self) -> &[u32] {
        self.arcs.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Whether the decoded name had more than [`MAX_OID_ARCS`] arcs.
    pub const fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Whether `prefix` is a prefix of (or equal to) this name.
    pub fn starts_with(&self, prefix: &[u32]) -> bool {
        self.arcs().starts_with(prefix)
    }

    /// Decode OBJECT IDENTIFIER content octets (X.690 8.19: first sub-identifier is 40·x + y,
    /// then base-128 big-endian groups with the top bit as continuation).
    pub fn decode(content: &[u8]) -> Result<Oid, BerError> {
        if content.is_empty() {
            return Err(BerError::BadOid);
        }
        let mut oid = Oid::EMPTY;
        let mut value: u64 = 0;
        let mut in_subid = false;
        let mut first = true;
        for &b in content {
            if !in_subid && b == 0x80 {
                return Err(BerError::BadOid);
            }
            value = (value << 7) | u64::from(b & 0x7F);
            // The largest legal first group is 2·40 + (2^32−1); anything above can only grow.
            if value > u64::from(u32::MAX) + 80 {
                return Err(BerError::BadOid);
            }
            in_subid = true;
            if b & 0x80 != 0 {
                continue;
            }
            in_subid = false;
            let v = value;
            value = 0;
            if first {
                first = false;
                let (x, y) = match v {
                    0..40 => (0, v),
                    40..80 => (1, v - 40),
                    _ => (2, v - 80),
                };
                oid.push_or_truncate(x)?;
                oid.push_or_truncate(u32::try_from(y).map_err(|_| BerError::BadOid)?)?;
            } else {
                oid.push_or_truncate(u32::try_from(v).map_err(|_| BerError::BadOid)?)?;
            }
        }
        if in_subid {
            return Err(BerError::BadOid);
        }
        Ok(oid)
    }

    fn push_or_truncate(&mut self, arc: u32) -> Result<(), BerError> {
        if usize::from(self.len) < MAX_OID_ARCS {
            self.push(arc)
        } else {
            self.truncated = true;
            Ok(())
        }
    }

    /// Encode the content octets into `out`; returns the number of bytes. Names with fewer than
    /// two arcs are encoded as if padded with zeros (`0.0`), as net-snmp does.
    pub fn encode(&self, out: &mut [u8; MAX_OID_ARCS * 5]) -> usize {
        let arcs = self.arcs();
        let x = u64::from(arcs.first().copied().unwrap_or(0));
        let y = u64::from(arcs.get(1).copied().unwrap_or(0));
        let mut n = 0;
        n = put_base128(out, n, x.saturating_mul(40).saturating_add(y));
        for &a in arcs.iter().skip(2) {
            n = put_base128(out, n, u64::from(a));
        }
        n
    }
}

/// Write `v` in base 128 at `out[n..]`; returns the new end. Stops silently at the end of
/// `out`, which is sized for [`MAX_OID_ARCS`] arcs of at most five groups each.
fn put_base128(out: &mut [u8], mut n: usize, v: u64) -> usize {
    let mut groups = [0u8; 10];
    let mut count = 0;
    let mut rest = v;
    loop {
        if let Some(g) = groups.get_mut(count) {
            *g = (rest & 0x7F) as u8;
        }
        count += 1;
        rest >>= 7;
        if rest == 0 || count == groups.len() {
            break;
        }
    }
    for i in (0..count).rev() {
        let cont = if i == 0 { 0 } else { 0x80 };
        if let (Some(slot), Some(g)) = (out.get_mut(n), groups.get(i)) {
            *slot = g | cont;
            n += 1;
        }
    }
    n
}

impl PartialEq for Oid {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Oid {}

impl PartialOrd for Oid {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Oid {
    fn cmp(&self, other: &Self) -> Ordering {
        self.arcs()
            .cmp(other.arcs())
            .then(self.truncated.cmp(&other.truncated))
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.arcs().iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{a}")?;
        }
        if self.truncated {
            f.write_str("...")?;
        }
        Ok(())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Oid {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[?]}", self.arcs())
    }
}

/// Where a constructed value started, returned by [`Writer::begin`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a constructed value must be closed with Writer::end"]
pub struct Open {
    start: usize,
}

/// Forward BER encoder into a borrowed buffer.
///
/// Constructed values are written as `begin()`, their content, then `end(tag)`, which shifts the
/// content right by the header size and writes the header: O(size × depth), trivial at SNMP
/// sizes, and lengths come out minimal. While a value is open, room for its header is reserved,
/// so a content write that would not leave room for every open header fails with
/// [`BerError::BufferFull`] and leaves the buffer as it was before that write.
pub struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
    reserved: usize,
    cap: usize,
}

impl<'b> Writer<'b> {
    /// A writer over `buf` (used up to [`MAX_ENCODED_LEN`] bytes).
    pub fn new(buf: &'b mut [u8]) -> Self {
        let cap = buf.len().min(MAX_ENCODED_LEN);
        Writer {
            buf,
            pos: 0,
            reserved: 0,
            cap,
        }
    }

    /// Bytes written so far.
    pub const fn len(&self) -> usize {
        self.pos
    }

    /// Whether nothing was written yet.
    pub const fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Forget everything written after `len` (a value returned by [`Writer::len`] while the
    /// same values were open). Used to roll back a varbind that did not fit.
    pub fn truncate(&mut self, len: usize) {
        if len <= self.pos {
            self.pos = len;
        }
    }

    fn room(&self, n: usize) -> Result<(), BerError> {
        match self
            .pos
            .checked_add(n)
            .and_then(|e| e.checked_add(self.reserved))
        {
            Some(end) if end <= self.cap => Ok(()),
            _ => Err(BerError::BufferFull),
        }
    }

    /// Append raw bytes (already encoded TLVs).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), BerError> {
        self.room(bytes.len())?;
        let end = self.pos + bytes.len();
        self.buf
            .get_mut(self.pos..end)
            .ok_or(BerError::BufferFull)?
            .copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// Append a primitive TLV.
    pub fn tlv(&mut self, tag: u8, content: &[u8]) -> Result<(), BerError> {
        let mut hdr = [0u8; MAX_HEADER];
        let h = header(&mut hdr, tag, content.len())?;
        self.room(h + content.len())?;
        self.raw(hdr.get(..h).ok_or(BerError::BufferFull)?)?;
        self.raw(content)
    }

    /// Append a signed INTEGER-like value with `tag`, minimal two's complement.
    pub fn int(&mut self, tag: u8, v: i64) -> Result<(), BerError> {
        let bytes = v.to_be_bytes();
        let mut skip = 0;
        while skip < 7 {
            let (Some(&b), Some(&next)) = (bytes.get(skip), bytes.get(skip + 1)) else {
                break;
            };
            let redundant = (b == 0x00 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0);
            if !redundant {
                break;
            }
            skip += 1;
        }
        self.tlv(tag, bytes.get(skip..).unwrap_or(&[0]))
    }

    /// Append an unsigned value (Counter32, Gauge32, TimeTicks) with `tag`.
    pub fn uint(&mut self, tag: u8, v: u32) -> Result<(), BerError> {
        self.int(tag, i64::from(v))
    }

    /// Append an OBJECT IDENTIFIER.
    pub fn oid(&mut self, oid: &Oid) -> Result<(), BerError> {
        let mut tmp = [0u8; MAX_OID_ARCS * 5];
        let n = oid.encode(&mut tmp);
        self.tlv(TAG_OID, tmp.get(..n).unwrap_or(&[]))
    }

    /// Open a constructed value.
    pub fn begin(&mut self) -> Result<Open, BerError> {
        self.room(MAX_HEADER)?;
        self.reserved += MAX_HEADER;
        Ok(Open { start: self.pos })
    }

    /// Close the value opened by `open`, giving it `tag`.
    pub fn end(&mut self, open: Open, tag: u8) -> Result<(), BerError> {
        self.reserved = self.reserved.saturating_sub(MAX_HEADER);
        let len = self
            .pos
            .checked_sub(open.start)
            .ok_or(BerError::BufferFull)?;
        let mut hdr = [0u8; MAX_HEADER];
        let h = header(&mut hdr, tag, len)?;
        self.room(h)?;
        self.buf
            .copy_within(open.start..self.pos, open.start.saturating_add(h));
        self.buf
            .get_mut(open.start..open.start + h)
            .ok_or(BerError::BufferFull)?
            .copy_from_slice(hdr.get(..h).ok_or(BerError::BufferFull)?);
        self.pos += h;
        Ok(())
    }
}

/// Encode a tag and a definite length into `out`; returns the header size.
fn header(out: &mut [u8; MAX_HEADER], tag: u8, len: usize) -> Result<usize, BerError> {
    out[0] = tag;
    if len < 0x80 {
        out[1] = len as u8;
        Ok(2)
    } else if len <= 0xFF {
        out[1] = 0x81;
        out[2] = len as u8;
        Ok(3)
    } else if len <= 0xFFFF {
        out[1] = 0x82;
        out[2] = (len >> 8) as u8;
        out[3] = len as u8;
        Ok(4)
    } else {
        Err(BerError::BufferFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn encode_int(v: i64) -> Vec<u8> {
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf);
        w.int(TAG_INTEGER, v).unwrap();
        let n = w.len();
        buf[..n].to_vec()
    }

    #[test]
    fn integers_use_minimal_twos_complement() {
        assert_eq!(encode_int(0), [0x02, 0x01, 0x00]);
        assert_eq!(encode_int(127), [0x02, 0x01, 0x7F]);
        assert_eq!(encode_int(128), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(encode_int(-1), [0x02, 0x01, 0xFF]);
        assert_eq!(encode_int(-128), [0x02, 0x01, 0x80]);
        assert_eq!(encode_int(-129), [0x02, 0x02, 0xFF, 0x7F]);
        assert_eq!(
            encode_int(u32::MAX as i64),
            [0x02, 0x05, 0x00, 0xFF, 0xFF, 0xFF, 0xFF]
        );
    }

    #[test]
    fn lengths_use_long_form_above_127_bytes() {
        let mut buf = [0u8; 400];
        let mut w = Writer::new(&mut buf);
        w.tlv(TAG_OCTET_STRING, &[0xAA; 200]).unwrap();
        assert_eq!(&buf[..3], &[0x04, 0x81, 200]);
        let mut buf = [0u8; 400];
        let mut w = Writer::new(&mut buf);
        w.tlv(TAG_OCTET_STRING, &[0xAA; 300]).unwrap();
        assert_eq!(&buf[..4], &[0x04, 0x82, 0x01, 0x2C]);
        let mut r = Reader::new(&buf[..304]);
        assert_eq!(r.expect(TAG_OCTET_STRING).unwrap().len(), 300);
    }

    #[test]
    fn nested_sequences_get_their_headers_inserted_on_close() {
        let mut buf = [0u8; 300];
        let mut w = Writer::new(&mut buf);
        let outer = w.begin().unwrap();
        let inner = w.begin().unwrap();
        w.tlv(TAG_OCTET_STRING, &[1; 130]).unwrap();
        w.end(inner, TAG_SEQUENCE).unwrap();
        w.tlv(TAG_NULL, &[]).unwrap();
        w.end(outer, 0xA2).unwrap();
        let n = w.len();
        // inner: 30 81 85 | 04 81 82 ..130 ; then 05 00 ; outer 0xA2 0x81 (3+3+130+2)
        assert_eq!(&buf[..3], &[0xA2, 0x81, 138]);
        assert_eq!(&buf[3..6], &[0x30, 0x81, 133]);
        assert_eq!(n, 3 + 138);
        let mut r = Reader::new(&buf[..n]);
        let outer = r.expect(0xA2).unwrap();
        r.finish().unwrap();
        let mut r = Reader::new(outer);
        assert_eq!(r.expect(TAG_SEQUENCE).unwrap().len(), 133);
        assert_eq!(r.expect(TAG_NULL).unwrap(), &[] as &[u8]);
    }

    #[test]
    fn writer_refuses_a_value_that_would_not_leave_room_for_open_headers() {
        let mut buf = [0u8; 10];
        let mut w = Writer::new(&mut buf);
        let seq = w.begin().unwrap();
        // 10 bytes − 4 reserved = 6: a 5-byte TLV fits, a second does not.
        w.tlv(TAG_OCTET_STRING, &[1, 2, 3]).unwrap();
        assert_eq!(
            w.tlv(TAG_OCTET_STRING, &[1, 2, 3]),
            Err(BerError::BufferFull)
        );
        assert_eq!(w.len(), 5);
        w.end(seq, TAG_SEQUENCE).unwrap();
        assert_eq!(&buf[..7], &[0x30, 5, 0x04, 3, 1, 2, 3]);
    }

    #[test]
    fn oid_first_byte_combines_the_first_two_arcs_and_large_arcs_use_base_128() {
        let oid = Oid::from_arcs(&[1, 3, 6, 1, 4, 1, 19865, 2, 1, 0]).unwrap();
        let mut tmp = [0u8; MAX_OID_ARCS * 5];
        let n = oid.encode(&mut tmp);
        assert_eq!(&tmp[..n], &[0x2B, 6, 1, 4, 1, 0x81, 0x9B, 0x19, 2, 1, 0]);
        assert_eq!(Oid::decode(&tmp[..n]).unwrap(), oid);
        let big = Oid::from_arcs(&[2, 999, u32::MAX]).unwrap();
        let n = big.encode(&mut tmp);
        assert_eq!(Oid::decode(&tmp[..n]).unwrap(), big);
    }

    #[test]
    fn oid_decoder_rejects_malformed_content() {
        assert_eq!(Oid::decode(&[]), Err(BerError::BadOid));
        assert_eq!(Oid::decode(&[0x2B, 0x81]), Err(BerError::BadOid));
        assert_eq!(Oid::decode(&[0x2B, 0x80, 0x01]), Err(BerError::BadOid));
        // 2^32 does not fit a sub-identifier.
        assert_eq!(
            Oid::decode(&[0x2B, 0x90, 0x80, 0x80, 0x80, 0x00]),
            Err(BerError::BadOid)
        );
    }

    #[test]
    fn long_oids_are_truncated_and_sort_after_their_prefix() {
        let mut content = vec![0x2B];
        content.extend(std::iter::repeat_n(1u8, 40));
        let long = Oid::decode(&content).unwrap();
        assert!(long.is_truncated());
        assert_eq!(long.arcs().len(), MAX_OID_ARCS);
        let prefix = Oid::from_arcs(long.arcs()).unwrap();
        assert!(prefix < long);
        let after = Oid::from_arcs(&[1, 3, 2]).unwrap();
        assert!(long < after);
    }

    #[test]
    fn reader_rejects_indefinite_high_tag_and_overlong_lengths() {
        assert_eq!(
            Reader::new(&[0x30, 0x80, 0, 0]).read(),
            Err(BerError::IndefiniteLength)
        );
        assert_eq!(
            Reader::new(&[0x1F, 0x01, 0]).read(),
            Err(BerError::HighTagNumber)
        );
        assert_eq!(
            Reader::new(&[0x04, 0x85, 1, 1, 1, 1, 1]).read(),
            Err(BerError::LengthTooLong)
        );
        assert_eq!(
            Reader::new(&[0x04, 0x82, 0x01]).read(),
            Err(BerError::Truncated)
        );
        assert_eq!(
            Reader::new(&[0x04, 0x05, 1]).read(),
            Err(BerError::Truncated)
        );
        // Non-minimal long form is legal BER and accepted.
        assert_eq!(
            Reader::new(&[0x04, 0x81, 0x01, 7]).read().unwrap().content,
            &[7]
        );
    }

    #[test]
    fn integer_decoder_accepts_up_to_32_bits() {
        assert_eq!(decode_i32(&[0xFF]), Ok(-1));
        assert_eq!(decode_i32(&[0x7F, 0xFF, 0xFF, 0xFF]), Ok(i32::MAX));
        assert_eq!(decode_i32(&[0x00, 0x7F, 0xFF, 0xFF, 0xFF]), Ok(i32::MAX));
        assert_eq!(
            decode_i32(&[0x00, 0x80, 0, 0, 0]),
            Err(BerError::BadInteger)
        );
        assert_eq!(decode_i32(&[]), Err(BerError::BadInteger));
        assert_eq!(decode_u32(&[0x00, 0xFF, 0xFF, 0xFF, 0xFF]), Ok(u32::MAX));
        assert_eq!(decode_u32(&[0xFF]), Err(BerError::BadInteger));
    }

    proptest! {
        #[test]
        fn integers_round_trip(v in any::<i32>()) {
            let bytes = encode_int(i64::from(v));
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.read_i32().unwrap(), v);
            // Minimal: no redundant leading byte.
            let content = &bytes[2..];
            if content.len() > 1 {
                let redundant = (content[0] == 0 && content[1] & 0x80 == 0)
                    || (content[0] == 0xFF && content[1] & 0x80 != 0);
                prop_assert!(!redundant);
            }
        }

        #[test]
        fn oids_round_trip_and_order_like_their_arcs(
            a in proptest::collection::vec(any::<u32>(), 0..12),
            b in proptest::collection::vec(any::<u32>(), 0..12),
        ) {
            let mk = |tail: &[u32]| {
                let mut arcs = vec![1u32, 3];
                arcs.extend_from_slice(tail);
                Oid::from_arcs(&arcs).unwrap()
            };
            let (oa, ob) = (mk(&a), mk(&b));
            let mut tmp = [0u8; MAX_OID_ARCS * 5];
            let n = oa.encode(&mut tmp);
            prop_assert_eq!(Oid::decode(&tmp[..n]).unwrap(), oa);
            prop_assert_eq!(oa.cmp(&ob), a.cmp(&b));
        }

        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Oid::decode(&bytes);
            let _ = decode_i32(&bytes);
            let mut r = Reader::new(&bytes);
            while r.read().is_ok() && !r.is_empty() {}
        }
    }
}
