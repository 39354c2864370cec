//! Request decoding: the head (via `httparse`) and form bodies. Basic credentials are checked by
//! [`crate::basic_auth`].
//!
//! `httparse` does the request line and headers. The `application/x-www-form-urlencoded` decoder
//! (`+` → space, `%XX`) is hand-written: a few lines, where a crate would bring allocation.
//! Every function here takes untrusted bytes and answers with an error value, never a panic.
use core::fmt;

/// Most header lines a request may carry; more is answered 431.
pub const MAX_HEADERS: usize = 24;

/// Request methods the PDU knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD` (answered like GET without a body would be; here: 405 except on known GET paths).
    Head,
    /// `POST`.
    Post,
    /// `OPTIONS` (CORS preflight).
    Options,
    /// Any other token (`PUT`, `DELETE`, …): answered 405.
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// The parts of a request head the PDU uses. Borrows the input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'b> {
    /// The method.
    pub method: Method,
    /// The path without the query string.
    pub path: &'b str,
    /// `Content-Length`, if sent.
    pub content_length: Option<usize>,
    /// The raw `Authorization` header value, if sent.
    pub authorization: Option<&'b [u8]>,
    /// `Transfer-Encoding` was sent (chunked bodies are not supported).
    pub transfer_encoding: bool,
    /// Offset of the first body byte in the input.
    pub body_offset: usize,
}

/// Why a request head was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// Not valid HTTP/1.x (bad request line, header syntax, …): 400.
    Malformed(&'static str),
    /// More than [`MAX_HEADERS`] header lines, or the head is longer than the limit: 431.
    HeadTooLarge,
    /// `Content-Length` is not a number, or appears twice with different values: 400.
    BadContentLength,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Malformed(why) => write!(f, "malformed request: {why}"),
            RequestError::HeadTooLarge => f.write_str("request head too large"),
            RequestError::BadContentLength => f.write_str("invalid Content-Length"),
        }
    }
}

impl core::error::Error for RequestError {}

/// Parses a request head from the bytes received so far.
///
/// `Ok(None)`: the head is not complete yet and `input` is shorter than `max_head` (read more).
/// A head that is not complete within `max_head` bytes is [`RequestError::HeadTooLarge`].
pub fn parse_head(input: &[u8], max_head: usize) -> Result<Option<Head<'_>>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let body_offset = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if input.len() >= max_head {
                Err(RequestError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(e) => return Err(RequestError::Malformed(httparse_reason(e))),
    };
    if body_offset > max_head {
        return Err(RequestError::HeadTooLarge);
    }
    let method = Method::from_token(req.method.unwrap_or(""));
    let target = req
        .path
        .ok_or(RequestError::Malformed("no request target"))?;
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(RequestError::Malformed(
            "request target is not an absolute path",
        ));
    }
    let mut content_length = None;
    let mut authorization = None;
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_decimal(h.value).ok_or(RequestError::BadContentLength)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(RequestError::BadContentLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        }
    }
    Ok(Some(Head {
        method,
        path,
        content_length,
        authorization,
        transfer_encoding,
        body_offset,
    }))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid method",
        httparse::Error::Version => "invalid HTTP version",
        _ => "invalid request",
    }
}

/// A decimal number of at most 9 digits (so it always fits), surrounding spaces allowed.
fn parse_decimal(bytes: &[u8]) -> Option<usize> {
    let text = core::str::from_utf8(bytes).ok()?.trim();
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Why a form body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A decoded key or value is not UTF-8.
    NotUtf8,
    /// A decoded value is longer than the field allows.
    TooLong,
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FormError::BadEscape => "bad percent escape in form body",
            FormError::NotUtf8 => "form field is not UTF-8",
            FormError::TooLong => "form field too long",
        })
    }
}

impl core::error::Error for FormError {}

/// Iterates over the raw `key=value` pairs of a form body (still percent-encoded). Empty
/// pairs (`a=1&&b=2`) are skipped; a pair without `=` has an empty value.
pub fn form_pairs(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    body.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (
                pair.get(..i).unwrap_or(&[]),
                pair.get(i + 1..).unwrap_or(&[]),
            ),
            None => (pair, &[][..]),
        })
}

/// URL-decodes a form component into a bounded string.
pub fn form_decode<const N: usize>(raw: &[u8]) -> Result<heapless::String<N>, FormError> {
    let mut bytes: heapless::Vec<u8, N> = heapless::Vec::new();
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let decoded = match b {
            b'+' => b' ',
            b'%' => {
                let hi = raw.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = raw.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        i += 2;
                        (h * 16 + l) as u8
                    }
                    _ => return Err(FormError::BadEscape),
                }
            }
            other => other,
        };
        bytes.push(decoded).map_err(|_| FormError::TooLong)?;
        i += 1;
    }
    heapless::String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

/// Whether a raw (encoded) form key equals `name` (keys are plain ASCII here).
pub fn key_is(raw: &[u8], name: &str) -> bool {
    raw == name.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn head(input: &[u8]) -> Head<'_> {
        parse_head(input, 1024).unwrap().expect("complete head")
    }

    #[test]
    fn parses_method_path_and_headers() {
        let h = head(b"POST /api/control?x=1 HTTP/1.1\r\nContent-Length: 12\r\nAuthorization: Basic YQ==\r\n\r\nchannel1=on");
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.path, "/api/control");
        assert_eq!(h.content_length, Some(12));
        assert_eq!(h.authorization, Some(&b"Basic YQ=="[..]));
        assert!(!h.transfer_encoding);
    }

    #[test]
    fn incomplete_head_asks_for_more_bytes() {
        assert_eq!(parse_head(b"GET /api/sta", 1024), Ok(None));
        assert_eq!(
            parse_head(b"GET /api/status HTTP/1.1\r\nHost: x\r\n", 1024),
            Ok(None)
        );
    }

    #[test]
    fn head_longer_than_limit_is_too_large() {
        assert_eq!(
            parse_head(b"GET /api/status HTTP/1.1\r\nHost: x\r\n", 16),
            Err(RequestError::HeadTooLarge)
        );
        let complete = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
        assert_eq!(parse_head(complete, 20), Err(RequestError::HeadTooLarge));
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut req = heapless::Vec::<u8, 1024>::new();
        req.extend_from_slice(b"GET / HTTP/1.1\r\n").unwrap();
        for _ in 0..=MAX_HEADERS {
            req.extend_from_slice(b"X: y\r\n").unwrap();
        }
        req.extend_from_slice(b"\r\n").unwrap();
        assert_eq!(parse_head(&req, 1024), Err(RequestError::HeadTooLarge));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_head(b"\x00\x01\r\n\r\n", 1024),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"GET * HTTP/1.1\r\n\r\n", 1024),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn bad_or_conflicting_content_length_is_rejected() {
        for req in [
            &b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert_eq!(parse_head(req, 1024), Err(RequestError::BadContentLength));
        }
    }

    #[test]
    fn form_decoding_handles_plus_and_escapes() {
        let s: heapless::String<32> = form_decode(b"Rack+A%2F1%C3%A4").unwrap();
        assert_eq!(s.as_str(), "Rack A/1ä");
        assert_eq!(form_decode::<8>(b"%4"), Err(FormError::BadEscape));
        assert_eq!(form_decode::<8>(b"%zz"), Err(FormError::BadEscape));
        assert_eq!(form_decode::<8>(b"%FF"), Err(FormError::NotUtf8));
        assert_eq!(form_decode::<3>(b"abcd"), Err(FormError::TooLong));
    }

    #[test]
    fn form_pairs_split_on_ampersand_and_equals() {
        let pairs: heapless::Vec<(&[u8], &[u8]), 8> = form_pairs(b"a=1&&b&c=x=y").collect();
        assert_eq!(
            pairs.as_slice(),
            &[(&b"a"[..], &b"1"[..]), (b"b", b""), (b"c", b"x=y")]
        );
    }

    proptest! {
        #[test]
        fn head_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), max in 0usize..700) {
            let _ = parse_head(&bytes, max);
        }

        #[test]
        fn head_parser_never_panics_on_near_http(path in "[ -~]{0,40}", hdr in "[ -~]{0,40}", val in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut req = heapless::Vec::<u8, 256>::new();
            let _ = req.extend_from_slice(b"POST ");
            let _ = req.extend_from_slice(path.as_bytes());
            let _ = req.extend_from_slice(b" HTTP/1.1\r\n");
            let _ = req.extend_from_slice(hdr.as_bytes());
            let _ = req.extend_from_slice(b": ");
            let _ = req.extend_from_slice(&val);
            let _ = req.extend_from_slice(b"\r\n\r\n");
            let _ = parse_head(&req, 1024);
        }

        #[test]
        fn form_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = form_decode::<64>(&bytes);
            for (k, v) in form_pairs(&bytes) {
                let _ = form_decode::<32>(k);
                let _ = form_decode::<32>(v);
            }
        }
    }
}
