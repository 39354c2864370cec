//! HTTP Basic authentication (RFC 7617), shared by the PDU's and the pump controller's HTTP
//! handlers.
//!
//! Base64 is the `base64` crate's, decoding into a stack buffer (no allocator); padding is
//! optional, as some clients leave it off.
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest decoded `user:password` accepted; longer credentials are simply "not authorised".
const MAX_CREDENTIALS: usize = 96;

/// Whether an `Authorization` header value carries Basic credentials equal to `user` and
/// `password`. A missing, malformed or over-long header is "not authorised", never an error.
pub fn matches(authorization: Option<&[u8]>, user: &str, password: &str) -> bool {
    let Some(value) = authorization.and_then(|v| core::str::from_utf8(v).ok()) else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let mut buf = [0u8; MAX_CREDENTIALS];
    let Ok(n) = ENGINE.decode_slice(token.trim(), &mut buf) else {
        return false;
    };
    let decoded = buf.get(..n).unwrap_or(&[]);
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    let (u, p) = decoded.split_at(colon);
    let p = p.get(1..).unwrap_or(&[]);
    // Both parts compared in full, so the time taken does not say which one was wrong.
    ct_eq(u, user.as_bytes()) & ct_eq(p, password.as_bytes())
}

/// Equality whose time depends only on the lengths, not on where the first difference is.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// The example-based tests are in `selftest::core_types` (they also run on the target ISAs).
#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = matches(Some(&bytes), "admin", "energis");
        }
    }
}
