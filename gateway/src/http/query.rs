//! Reading the query string of a SCEP GET (RFC 8894 §4.1): `operation=OP&message=MSG`.
//!
//! For PKIOperation by GET the message is the base64 of the pkiMessage, and clients
//! escape it in every way imaginable: sscep and Cisco IOS put `%0A` newlines in it, macOS
//! leaves `+` and `/` unescaped, form decoders turn `+` into a space, some use URL-safe
//! base64, some drop the padding. [`decode_message`] accepts all of them.

use base64::alphabet;
use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use percent_encoding::percent_decode;

use crate::error::{Error, Result};

/// The two parameters SCEP defines; anything else in the query is ignored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScepQuery {
    pub operation: Option<String>,
    /// Still percent-encoded: its meaning depends on the operation.
    pub message: Option<String>,
}

impl ScepQuery {
    pub fn parse(query: &str) -> Self {
        let mut out = ScepQuery::default();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            // Parameter names are matched case-insensitively: some clients send `Operation`.
            if name.eq_ignore_ascii_case("operation") && out.operation.is_none() {
                out.operation = Some(percent_decode_lossy(value));
            } else if name.eq_ignore_ascii_case("message") && out.message.is_none() {
                out.message = Some(value.to_owned());
            }
        }
        out
    }

    /// The `message` of GetCACert/GetCACaps: a CA identifier in plain text.
    pub fn message_text(&self) -> Option<String> {
        self.message.as_deref().map(percent_decode_lossy)
    }
}

fn percent_decode_lossy(value: &str) -> String {
    let plus_as_space = value.replace('+', " ");
    percent_decode(plus_as_space.as_bytes())
        .decode_utf8_lossy()
        .into_owned()
}

/// Base64 with either alphabet's last two characters, padding optional.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes the `message` of a PKIOperation GET into the pkiMessage bytes.
///
/// Percent-escapes are undone first (an invalid escape is a 400); then every character
/// that cannot be base64 is dropped when it is white space, and `-`/`_` (URL-safe
/// alphabet) and ` ` (a `+` that went through form decoding) are mapped back.
pub fn decode_message(raw: &str) -> Result<Vec<u8>> {
    let unescaped = percent_unescape_strict(raw.as_bytes())?;
    let mut clean = Vec::with_capacity(unescaped.len());
    for &b in &unescaped {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => clean.push(b),
            b'-' => clean.push(b'+'),
            b'_' => clean.push(b'/'),
            b' ' => clean.push(b'+'),
            b'\r' | b'\n' | b'\t' => {}
            _ => return Err(Error::Malformed("message is not base64".into())),
        }
    }
    // Padding may be missing, or present in the middle of nothing useful: strip it and
    // let the indifferent engine decide.
    while clean.last() == Some(&b'=') {
        clean.pop();
    }
    LENIENT
        .decode(&clean)
        .map_err(|_| Error::Malformed("message is not base64".into()))
}

/// Percent-decoding that refuses a `%` not followed by two hex digits, so a garbled URL
/// is reported as such instead of decoding to something else.
fn percent_unescape_strict(input: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            // Two ASCII hex digits exactly: `u8::from_str_radix` alone would also take
            // a sign (`%+1`).
            let hex = input
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Malformed("invalid percent-encoding in message".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    fn sample() -> Vec<u8> {
        (0u8..=255).cycle().take(700).collect()
    }

    #[test]
    fn every_client_escaping_decodes_to_the_same_bytes() {
        let bytes = sample();
        let b64 = STANDARD.encode(&bytes);
        let escaped: String =
            percent_encoding::utf8_percent_encode(&b64, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let with_newlines: String = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("%0A");
        let spaces = b64.replace('+', " ");
        let url_safe = URL_SAFE_NO_PAD.encode(&bytes);
        let unpadded = b64.trim_end_matches('=').to_string();
        for form in [
            &b64,
            &escaped,
            &with_newlines,
            &spaces,
            &url_safe,
            &unpadded,
        ] {
            assert_eq!(decode_message(form).unwrap(), bytes, "{form:.40}");
        }
    }

    #[test]
    fn the_captured_certmonger_request_target_decodes() {
        let target = include_str!("../../tests/data/certmonger-get-request-target.txt").trim();
        let query = target.split_once('?').unwrap().1;
        let q = ScepQuery::parse(query);
        assert_eq!(q.operation.as_deref(), Some("PKIOperation"));
        let der = decode_message(q.message.as_deref().unwrap()).unwrap();
        assert_eq!(
            der,
            include_bytes!("../../tests/data/certmonger-pkcsreq.der")
        );
    }

    #[test]
    fn garbage_is_a_clean_error() {
        assert!(decode_message("%zz").is_err());
        assert!(decode_message("%4").is_err());
        assert!(decode_message("%+1").is_err(), "a sign is not a hex digit");
        assert!(decode_message("abc$def").is_err());
        assert!(decode_message("").map(|v| v.is_empty()).unwrap_or(true));
    }

    #[test]
    fn query_parameters_are_found_in_any_case_and_order() {
        let q = ScepQuery::parse("message=CA%20one&Operation=GetCACert&x=1");
        assert_eq!(q.operation.as_deref(), Some("GetCACert"));
        assert_eq!(q.message_text().as_deref(), Some("CA one"));
    }
}
