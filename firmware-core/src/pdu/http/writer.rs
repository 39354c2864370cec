//! A `core::fmt::Write` sink over a caller's byte slice, and the number formatting the
//! front-ends share.
//!
//! Replies are rendered straight into the caller's buffer with `write!`, so nothing is allocated
//! and a reply that does not fit is detected (never truncated silently): the writer remembers
//! the overflow and the renderer turns it into an error value.
use core::fmt;

/// Writes formatted text into a borrowed byte slice; stops (and remembers) at the first write
/// that does not fit.
#[derive(Debug)]
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> SliceWriter<'a> {
    /// A writer that fills `buf` from the start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter {
            buf,
            len: 0,
            overflow: false,
        }
    }
    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether a write did not fit (everything after it was dropped).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }
    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
    /// Appends raw bytes (all or nothing).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> fmt::Result {
        if self.overflow {
            return Err(fmt::Error);
        }
        let end = match self.len.checked_add(bytes.len()) {
            Some(end) if end <= self.buf.len() => end,
            _ => {
                self.overflow = true;
                return Err(fmt::Error);
            }
        };
        match self.buf.get_mut(self.len..end) {
            Some(dst) => dst.copy_from_slice(bytes),
            None => {
                self.overflow = true;
                return Err(fmt::Error);
            }
        }
        self.len = end;
        Ok(())
    }
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes())
    }
}

/// A float with a fixed number of decimals for JSON: non-finite values become `null`
/// (JSON has no NaN or infinity).
#[derive(Debug, Clone, Copy)]
pub struct JsonNum(pub f32, pub usize);

impl fmt::Display for JsonNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_finite() {
            write!(f, "{:.*}", self.1, self.0)
        } else {
            f.write_str("null")
        }
    }
}

/// A float with a fixed number of decimals for text (console, HTML, Prometheus): non-finite
/// values print as Prometheus spells them (`NaN`, `+Inf`, `-Inf`).
#[derive(Debug, Clone, Copy)]
pub struct TextNum(pub f32, pub usize);

impl fmt::Display for TextNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_nan() {
            f.write_str("NaN")
        } else if self.0.is_infinite() {
            f.write_str(if self.0 > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            write!(f, "{:.*}", self.1, self.0)
        }
    }
}

/// An IPv4 address as `a.b.c.d`.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4(pub [u8; 4]);

impl fmt::Display for Ipv4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// A MAC address as `02:45:4E:00:00:01`.
#[derive(Debug, Clone, Copy)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

/// Parses a dotted-quad IPv4 address (`192.168.0.22`); `None` for anything else.
pub fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for slot in out.iter_mut() {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// A temperature in the configured unit (`C`, `F`, `K`; anything else is treated as `C`).
pub fn temperature_in(unit: char, celsius: f32) -> (f32, &'static str) {
    match unit {
        'F' => (celsius * 9.0 / 5.0 + 32.0, "°F"),
        'K' => (celsius + 273.15, "K"),
        _ => (celsius, "°C"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn writer_reports_overflow_and_keeps_what_fit() {
        let mut buf = [0u8; 5];
        let mut w = SliceWriter::new(&mut buf);
        assert!(write!(w, "abc").is_ok());
        assert!(write!(w, "def").is_err());
        assert!(w.overflowed());
        assert_eq!(w.written(), b"abc");
        assert!(
            write!(w, "x").is_err(),
            "writes after an overflow stay refused"
        );
    }

    #[test]
    fn json_numbers_are_never_nan() {
        let mut buf = [0u8; 32];
        let mut w = SliceWriter::new(&mut buf);
        write!(
            w,
            "{} {} {}",
            JsonNum(1.239, 2),
            JsonNum(f32::NAN, 2),
            JsonNum(-0.5, 1)
        )
        .unwrap();
        assert_eq!(w.written(), b"1.24 null -0.5");
    }

    #[test]
    fn text_numbers_spell_non_finite_like_prometheus() {
        let mut buf = [0u8; 32];
        let mut w = SliceWriter::new(&mut buf);
        write!(
            w,
            "{} {} {}",
            TextNum(f32::NAN, 1),
            TextNum(f32::INFINITY, 1),
            TextNum(2.0, 3)
        )
        .unwrap();
        assert_eq!(w.written(), b"NaN +Inf 2.000");
    }

    #[test]
    fn ipv4_parser_accepts_dotted_quads_only() {
        assert_eq!(parse_ipv4("192.168.0.22"), Some([192, 168, 0, 22]));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "a.b.c.d",
            "1..2.3",
            "+1.2.3.4",
            "1.2.3.0004",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
    }

    #[test]
    fn temperature_converts_to_configured_unit() {
        assert_eq!(temperature_in('C', 20.0), (20.0, "°C"));
        assert_eq!(temperature_in('F', 100.0), (212.0, "°F"));
        assert_eq!(temperature_in('K', 0.0), (273.15, "K"));
    }
}
