//! WebSocket (RFC 6455) framing for the pump's web server: the handshake's accept key and the
//! server side of the frame codec, over bounded buffers.
//!
//! * [`accept_key`]: `base64(SHA-1(Sec-WebSocket-Key ++ GUID))` for the `101` reply.
//! * [`decode`]: one client frame from the front of a buffer, unmasked in place; `Ok(None)` while
//!   the frame is incomplete. Client frames MUST be masked (§5.1), control frames MUST be at most
//!   125 bytes and not fragmented (§5.5); anything else is a [`WsFrameError`] and the server
//!   closes with the error's [`close_code`](WsFrameError::close_code).
//! * [`encode_header`]: the header of an unmasked server frame.
//!
//! **Limits.** A frame larger than the caller's `max_payload` is refused (1009, "message too
//! big") instead of read: the controller holds one frame in RAM and its commands are well under
//! the limit. Fragmented messages (a data frame without FIN, or a continuation) are refused the
//! same way, since reassembling them needs a second buffer; browsers send small messages in one
//! frame.
//!
//! **Why by hand.** The frame header is a few bit fields, and the codec must work in place on
//! the connection's buffer with an error (never a panic) for any input. `embedded-websocket`
//! does this too, but its current release brings its own `heapless` 0.7 (which on thumbv6m and
//! riscv32imc pulls in `atomic-polyfill`), a second `base64` and `rand_core`, none of which the
//! rest of the firmware needs. SHA-1 comes from the `sha1` crate, base64 from `base64`.
use core::fmt;

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a request's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes of digest are always 28 characters of padded base64.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut out);
    out
}

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Opcode {
    /// 0x0.
    Continuation,
    /// 0x1.
    Text,
    /// 0x2.
    Binary,
    /// 0x8.
    Close,
    /// 0x9.
    Ping,
    /// 0xA.
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    const fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, Ping or Pong.
    pub const fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why a client frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum WsFrameError {
    /// Reserved bits set, an unknown opcode, an unmasked client frame, or a bad control frame.
    Protocol,
    /// Larger than the server holds, or fragmented.
    TooBig,
}

impl WsFrameError {
    /// The close status to answer with: 1002 (protocol error) or 1009 (message too big).
    pub const fn close_code(self) -> u16 {
        match self {
            WsFrameError::Protocol => 1002,
            WsFrameError::TooBig => 1009,
        }
    }
}

impl fmt::Display for WsFrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WsFrameError::Protocol => "WebSocket protocol error",
            WsFrameError::TooBig => "WebSocket message too big",
        })
    }
}

impl core::error::Error for WsFrameError {}

/// A decoded frame: its opcode, and where its (unmasked) payload lies in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The opcode.
    pub opcode: Opcode,
    /// Payload start in the buffer.
    pub start: usize,
    /// Payload end; also the number of bytes the frame took.
    pub end: usize,
}

/// Decode the client frame at the front of `buf` (see the module docs); unmasks its payload in
/// place. `Ok(None)`: not all of it is there yet.
pub fn decode(buf: &mut [u8], max_payload: usize) -> Result<Option<Decoded>, WsFrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(WsFrameError::Protocol);
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsFrameError::Protocol)?;
    if b1 & 0x80 == 0 {
        return Err(WsFrameError::Protocol);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(WsFrameError::Protocol);
    }
    if !fin || opcode == Opcode::Continuation {
        return Err(WsFrameError::TooBig);
    }
    let len = usize::try_from(len).map_err(|_| WsFrameError::TooBig)?;
    if len > max_payload {
        return Err(WsFrameError::TooBig);
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    let end = at + len;
    let Some(payload) = buf.get_mut(at..end) else {
        return Ok(None);
    };
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok(Some(Decoded {
        opcode,
        start: at,
        end,
    }))
}

/// Longest server frame header.
pub const HEADER_MAX: usize = 10;

/// The header of an unmasked, final server frame of `len` payload bytes; returns its length
/// (2, 4 or 10).
pub fn encode_header(opcode: Opcode, len: usize, out: &mut [u8; HEADER_MAX]) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(l) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&l.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn the_accept_key_is_the_rfcs_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_masked_text_frame_is_unmasked_in_place() {
        let mut f = masked(0x1, br#"{"cmd":"stop"}"#);
        f.extend_from_slice(b"next");
        let d = decode(&mut f, 512).unwrap().unwrap();
        assert_eq!(d.opcode, Opcode::Text);
        assert_eq!(&f[d.start..d.end], br#"{"cmd":"stop"}"#);
        assert_eq!(&f[d.end..], b"next");
        let mut long = masked(0x1, &[b'a'; 300]);
        let d = decode(&mut long, 512).unwrap().unwrap();
        assert_eq!((d.start, d.end), (8, 308));
    }

    #[test]
    fn an_incomplete_frame_asks_for_more() {
        let f = masked(0x1, b"hello");
        for cut in 0..f.len() {
            let mut part = f[..cut].to_vec();
            assert_eq!(decode(&mut part, 512), Ok(None), "{cut}");
        }
    }

    #[test]
    fn bad_frames_are_refused_with_their_close_code() {
        let mut unmasked = vec![0x81, 0x02, b'h', b'i'];
        assert_eq!(decode(&mut unmasked, 512), Err(WsFrameError::Protocol));
        let mut big = masked(0x1, &[0; 600]);
        assert_eq!(decode(&mut big, 512), Err(WsFrameError::TooBig));
        let mut fragment = masked(0x1, b"part");
        fragment[0] &= 0x7F;
        assert_eq!(decode(&mut fragment, 512), Err(WsFrameError::TooBig));
        let mut reserved = masked(0x1, b"x");
        reserved[0] |= 0x40;
        assert_eq!(decode(&mut reserved, 512), Err(WsFrameError::Protocol));
        let mut opcode = masked(0x3, b"x");
        assert_eq!(decode(&mut opcode, 512), Err(WsFrameError::Protocol));
        assert_eq!(WsFrameError::TooBig.close_code(), 1009);
    }

    #[test]
    fn server_headers_have_the_three_length_forms() {
        let mut h = [0u8; HEADER_MAX];
        assert_eq!(encode_header(Opcode::Text, 5, &mut h), 2);
        assert_eq!(&h[..2], [0x81, 5]);
        assert_eq!(encode_header(Opcode::Text, 384, &mut h), 4);
        assert_eq!(&h[..4], [0x81, 126, 1, 128]);
        assert_eq!(encode_header(Opcode::Close, 70_000, &mut h), 10);
        assert_eq!(h[1], 127);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(Some(d)) = decode(&mut bytes, 512) {
                prop_assert!(d.start <= d.end && d.end <= bytes.len());
            }
        }
    }
}
