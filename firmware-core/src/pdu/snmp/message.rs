//! SNMP v1/v2c messages: a checked view of a request and the emitter of a response.
//!
//! ```text
//! Message ::= SEQUENCE { version INTEGER (0 = v1, 1 = v2c), community OCTET STRING, data PDU }
//! PDU     ::= [tag] IMPLICIT SEQUENCE { request-id INTEGER, error-status INTEGER,
//!                                       error-index INTEGER, variable-bindings VarBindList }
//! GetBulk ::= same shape, with non-repeaters / max-repetitions in place of status / index
//! VarBind ::= SEQUENCE { name OBJECT IDENTIFIER, value ANY }
//! ```
//! (RFC 1157 section 4, RFC 3416 section 3.) Parsing happens in two steps so an agent can
//! drop a packet with a foreign version or community before it spends work on the PDU:
//! [`Header::parse`] then [`RequestPdu::parse`].
use super::ber::{
    BerError, Oid, Reader, TAG_COUNTER32, TAG_END_OF_MIB_VIEW, TAG_GAUGE32, TAG_INTEGER,
    TAG_NO_SUCH_INSTANCE, TAG_NO_SUCH_OBJECT, TAG_NULL, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE,
    TAG_TIMETICKS, Tlv, Writer,
};

/// GetRequest-PDU.
pub const PDU_GET: u8 = 0xA0;
/// GetNextRequest-PDU.
pub const PDU_GET_NEXT: u8 = 0xA1;
/// GetResponse-PDU (v1) / Response-PDU (v2c).
pub const PDU_RESPONSE: u8 = 0xA2;
/// SetRequest-PDU.
pub const PDU_SET: u8 = 0xA3;
/// v1 Trap-PDU.
pub const PDU_TRAP_V1: u8 = 0xA4;
/// GetBulkRequest-PDU (v2c only).
pub const PDU_GET_BULK: u8 = 0xA5;
/// InformRequest-PDU.
pub const PDU_INFORM: u8 = 0xA6;
/// SNMPv2-Trap-PDU.
pub const PDU_TRAP_V2: u8 = 0xA7;
/// Report-PDU.
pub const PDU_REPORT: u8 = 0xA8;

/// Protocol version, as carried in the message's `version` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Version {
    /// SNMPv1 (RFC 1157), field value 0.
    V1,
    /// SNMPv2c (RFC 1901), field value 1.
    V2c,
}

impl Version {
    /// The wire value.
    pub const fn wire(self) -> i64 {
        match self {
            Version::V1 => 0,
            Version::V2c => 1,
        }
    }
}

/// Error statuses (RFC 1157 for 0–5, RFC 3416 for the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs)] // the names are the RFC's
pub enum ErrorStatus {
    NoError = 0,
    TooBig = 1,
    NoSuchName = 2,
    BadValue = 3,
    ReadOnly = 4,
    GenErr = 5,
    NoAccess = 6,
    WrongType = 7,
    WrongLength = 8,
    WrongEncoding = 9,
    WrongValue = 10,
    NoCreation = 11,
    InconsistentValue = 12,
    ResourceUnavailable = 13,
    CommitFailed = 14,
    UndoFailed = 15,
    AuthorizationError = 16,
    NotWritable = 17,
    InconsistentName = 18,
}

/// The message wrapper up to the PDU, borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The `version` field as sent (0 v1, 1 v2c, 3 v3, …).
    pub version: i32,
    /// The community string.
    pub community: &'a [u8],
    /// The PDU's tag (`PDU_*`).
    pub pdu_tag: u8,
    /// The PDU's content octets.
    pub pdu: &'a [u8],
}

impl<'a> Header<'a> {
    /// Parse the outer SEQUENCE. The whole datagram must be exactly one message.
    ///
    /// An SNMPv3 message parses here far enough to read its version (its second field is a
    /// SEQUENCE, not an OCTET STRING, so the community read fails): callers that want to count
    /// it as "unsupported version" should use [`Header::peek_version`] first.
    pub fn parse(datagram: &'a [u8]) -> Result<Header<'a>, BerError> {
        let mut outer = Reader::new(datagram);
        let msg = outer.expect(TAG_SEQUENCE)?;
        outer.finish()?;
        let mut r = Reader::new(msg);
        let version = r.read_i32()?;
        let community = r.expect(TAG_OCTET_STRING)?;
        let pdu = r.read()?;
        r.finish()?;
        Ok(Header {
            version,
            community,
            pdu_tag: pdu.tag,
            pdu: pdu.content,
        })
    }

    /// Only the version field of a message (any SNMP version), without checking the rest.
    pub fn peek_version(datagram: &[u8]) -> Result<i32, BerError> {
        let mut outer = Reader::new(datagram);
        let msg = outer.expect(TAG_SEQUENCE)?;
        Reader::new(msg).read_i32()
    }
}

/// A request PDU's fields (Get, GetNext, Set, GetBulk share the layout).
#[derive(Debug, Clone, Copy)]
pub struct RequestPdu<'a> {
    /// request-id, echoed in the response.
    pub request_id: i32,
    /// error-status (requests send 0) or, for GetBulk, non-repeaters.
    pub field1: i32,
    /// error-index (requests send 0) or, for GetBulk, max-repetitions.
    pub field2: i32,
    /// The variable bindings.
    pub varbinds: VarBindList<'a>,
}

impl<'a> RequestPdu<'a> {
    /// Parse a PDU's content octets.
    pub fn parse(content: &'a [u8]) -> Result<RequestPdu<'a>, BerError> {
        let mut r = Reader::new(content);
        let request_id = r.read_i32()?;
        let field1 = r.read_i32()?;
        let field2 = r.read_i32()?;
        let varbinds = VarBindList::new_checked(r.expect(TAG_SEQUENCE)?)?;
        r.finish()?;
        Ok(RequestPdu {
            request_id,
            field1,
            field2,
            varbinds,
        })
    }
}

/// One variable binding of a request.
#[derive(Debug, Clone, Copy)]
pub struct VarBind<'a> {
    /// The name, decoded.
    pub name: Oid,
    /// The name's content octets as received (echoed verbatim in responses).
    pub name_raw: &'a [u8],
    /// The value as received (NULL in Get requests).
    pub value: Tlv<'a>,
}

/// A checked view of a VarBindList's content octets: every entry is a well-formed
/// `SEQUENCE { OID, value }`, so iterating cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct VarBindList<'a> {
    raw: &'a [u8],
    count: usize,
}

impl<'a> VarBindList<'a> {
    /// Validate `raw` (the content of the VarBindList SEQUENCE).
    pub fn new_checked(raw: &'a [u8]) -> Result<VarBindList<'a>, BerError> {
        let mut r = Reader::new(raw);
        let mut count = 0usize;
        while !r.is_empty() {
            parse_varbind(r.expect(TAG_SEQUENCE)?)?;
            count = count.saturating_add(1);
        }
        Ok(VarBindList { raw, count })
    }

    /// The list's content octets (echoed verbatim by error responses).
    pub const fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Number of bindings.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// Whether the list is empty.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bindings, in order.
    pub fn iter(&self) -> impl Iterator<Item = VarBind<'a>> + 'a {
        let mut r = Reader::new(self.raw);
        core::iter::from_fn(move || {
            if r.is_empty() {
                return None;
            }
            // Checked in `new_checked`: an error here cannot happen; it ends the iteration.
            r.expect(TAG_SEQUENCE)
                .ok()
                .and_then(|c| parse_varbind(c).ok())
        })
    }
}

fn parse_varbind(content: &[u8]) -> Result<VarBind<'_>, BerError> {
    let mut r = Reader::new(content);
    let name_raw = r.expect(TAG_OID)?;
    let name = Oid::decode(name_raw)?;
    let value = r.read()?;
    r.finish()?;
    Ok(VarBind {
        name,
        name_raw,
        value,
    })
}

/// A value to put in a response varbind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// INTEGER.
    Integer(i32),
    /// OCTET STRING.
    OctetString(&'a [u8]),
    /// NULL.
    Null,
    /// OBJECT IDENTIFIER.
    ObjectId(&'a Oid),
    /// TimeTicks (hundredths of a second).
    TimeTicks(u32),
    /// Counter32.
    Counter32(u32),
    /// Gauge32.
    Gauge32(u32),
    /// v2c exception: no such object type.
    NoSuchObject,
    /// v2c exception: object type known, instance not.
    NoSuchInstance,
    /// v2c exception: nothing follows in the MIB.
    EndOfMibView,
}

impl Value<'_> {
    /// Append this value as a TLV.
    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), BerError> {
        match *self {
            Value::Integer(v) => w.int(TAG_INTEGER, i64::from(v)),
            Value::OctetString(s) => w.tlv(TAG_OCTET_STRING, s),
            Value::Null => w.tlv(TAG_NULL, &[]),
            Value::ObjectId(o) => w.oid(o),
            Value::TimeTicks(v) => w.uint(TAG_TIMETICKS, v),
            Value::Counter32(v) => w.uint(TAG_COUNTER32, v),
            Value::Gauge32(v) => w.uint(TAG_GAUGE32, v),
            Value::NoSuchObject => w.tlv(TAG_NO_SUCH_OBJECT, &[]),
            Value::NoSuchInstance => w.tlv(TAG_NO_SUCH_INSTANCE, &[]),
            Value::EndOfMibView => w.tlv(TAG_END_OF_MIB_VIEW, &[]),
        }
    }
}

/// A varbind name for a response: decoded, or the request's bytes echoed.
#[derive(Debug, Clone, Copy)]
pub enum Name<'a> {
    /// Encode this name.
    Oid(&'a Oid),
    /// Copy these OID content octets.
    Raw(&'a [u8]),
}

/// Append one `SEQUENCE { name, value }`. On [`BerError::BufferFull`] nothing is left of it.
pub fn emit_varbind(w: &mut Writer<'_>, name: Name<'_>, value: &Value<'_>) -> Result<(), BerError> {
    let mark = w.len();
    let res = (|| {
        let seq = w.begin()?;
        match name {
            Name::Oid(o) => w.oid(o)?,
            Name::Raw(r) => w.tlv(TAG_OID, r)?,
        }
        value.emit(w)?;
        w.end(seq, TAG_SEQUENCE)
    })();
    if res.is_err() {
        w.truncate(mark);
    }
    res
}

/// The fixed part of a response.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHeader<'a> {
    /// Version of the request.
    pub version: Version,
    /// Community of the request.
    pub community: &'a [u8],
    /// request-id of the request.
    pub request_id: i32,
    /// error-status.
    pub error_status: ErrorStatus,
    /// error-index (1-based varbind, 0 = none).
    pub error_index: u32,
}

/// Emit a whole Response message into `out`; `body` appends the varbinds. Returns the length.
pub fn emit_response(
    out: &mut [u8],
    header: &ResponseHeader<'_>,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), BerError>,
) -> Result<usize, BerError> {
    let mut w = Writer::new(out);
    let msg = w.begin()?;
    w.int(TAG_INTEGER, header.version.wire())?;
    w.tlv(TAG_OCTET_STRING, header.community)?;
    let pdu = w.begin()?;
    w.int(TAG_INTEGER, i64::from(header.request_id))?;
    w.int(TAG_INTEGER, header.error_status as i64)?;
    w.int(TAG_INTEGER, i64::from(header.error_index))?;
    let list = w.begin()?;
    body(&mut w)?;
    w.end(list, TAG_SEQUENCE)?;
    w.end(pdu, PDU_RESPONSE)?;
    w.end(msg, TAG_SEQUENCE)?;
    Ok(w.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `snmpget -v1 -c public HOST 1.3.6.1.2.1.1.1.0` as net-snmp puts it on the wire
    /// (request-id 0x1234_5678).
    pub(crate) const NET_SNMP_V1_GET_SYSDESCR: [u8; 43] = [
        0x30, 0x29, 0x02, 0x01, 0x00, 0x04, 0x06, b'p', b'u', b'b', b'l', b'i', b'c', 0xA0, 0x1C,
        0x02, 0x04, 0x12, 0x34, 0x56, 0x78, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30, 0x0E, 0x30,
        0x0C, 0x06, 0x08, 0x2B, 0x06, 0x01, 0x02, 0x01, 0x01, 0x01, 0x00, 0x05, 0x00,
    ];

    #[test]
    fn a_net_snmp_get_parses_into_its_fields() {
        let h = Header::parse(&NET_SNMP_V1_GET_SYSDESCR).unwrap();
        assert_eq!(h.version, 0);
        assert_eq!(h.community, b"public");
        assert_eq!(h.pdu_tag, PDU_GET);
        let pdu = RequestPdu::parse(h.pdu).unwrap();
        assert_eq!(pdu.request_id, 0x1234_5678);
        assert_eq!(pdu.varbinds.len(), 1);
        let vb = pdu.varbinds.iter().next().unwrap();
        assert_eq!(vb.name.arcs(), &[1, 3, 6, 1, 2, 1, 1, 1, 0]);
        assert_eq!(vb.value.tag, TAG_NULL);
    }

    #[test]
    fn a_response_is_encoded_byte_for_byte_like_net_snmp_expects() {
        let mut out = [0u8; 64];
        let oid = Oid::from_arcs(&[1, 3, 6, 1, 2, 1, 1, 7, 0]).unwrap();
        let n = emit_response(
            &mut out,
            &ResponseHeader {
                version: Version::V1,
                community: b"public",
                request_id: 0x1234_5678,
                error_status: ErrorStatus::NoError,
                error_index: 0,
            },
            |w| emit_varbind(w, Name::Oid(&oid), &Value::Integer(72)),
        )
        .unwrap();
        let expected: [u8; 44] = [
            0x30, 0x2A, 0x02, 0x01, 0x00, 0x04, 0x06, b'p', b'u', b'b', b'l', b'i', b'c', 0xA2,
            0x1D, 0x02, 0x04, 0x12, 0x34, 0x56, 0x78, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30,
            0x0F, 0x30, 0x0D, 0x06, 0x08, 0x2B, 0x06, 0x01, 0x02, 0x01, 0x01, 0x07, 0x00, 0x02,
            0x01, 0x48,
        ];
        assert_eq!(&out[..n], &expected);
    }

    #[test]
    fn malformed_varbind_lists_are_rejected() {
        // Varbind missing its value.
        assert!(VarBindList::new_checked(&[0x30, 0x03, 0x06, 0x01, 0x2B]).is_err());
        // Name is not an OID.
        assert!(VarBindList::new_checked(&[0x30, 0x04, 0x04, 0x00, 0x05, 0x00]).is_err());
        // Extra element inside the varbind.
        assert!(
            VarBindList::new_checked(&[0x30, 0x07, 0x06, 0x01, 0x2B, 0x05, 0x00, 0x05, 0x00])
                .is_err()
        );
    }

    #[test]
    fn trailing_bytes_after_the_message_are_rejected() {
        let mut bytes = NET_SNMP_V1_GET_SYSDESCR.to_vec();
        bytes.push(0);
        assert_eq!(Header::parse(&bytes), Err(BerError::TrailingData));
    }
}
