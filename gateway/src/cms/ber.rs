//! A small, lenient TLV reader for the BER that SCEP clients send, and the few DER
//! writing helpers the builders share.
//!
//! Why not `der`'s decoder: real clients send BER (X.690 §8) where DER (§10) is
//! expected. micromdm scepclient sends a *constructed* encryptedContent with definite
//! lengths, old clients send indefinite lengths, and signatures must be checked over the
//! bytes exactly as received (RFC 5652 §5.4), which a decode/re-encode round trip does
//! not preserve. So this reader:
//!
//! - accepts definite and indefinite lengths (X.690 §8.1.3), the latter only on
//!   constructed elements (§8.1.3.2 a);
//! - exposes the raw bytes of every element ([`Tlv::raw`]) so that callers can hash or
//!   copy them unchanged;
//! - reassembles constructed OCTET STRINGs (§8.7.3) on request;
//! - bounds nesting at [`MAX_DEPTH`] and checks every length computation, so that no
//!   input, however hostile, makes it panic, loop or allocate more than its own size.
//!
//! Only low tag numbers (< 31) are supported: CMS, X.509 and SCEP use no others.

use std::borrow::Cow;

use const_oid::ObjectIdentifier;
use der::Encode;

/// The deepest nesting accepted. A certificate inside a SignedData inside a
/// ContentInfo reaches about 12 levels; 32 leaves room and stops stack exhaustion.
pub const MAX_DEPTH: usize = 32;

/// Universal and context tags used by CMS, as the identifier octet.
pub mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const IA5_STRING: u8 = 0x16;
    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// The constructed bit of an identifier octet (X.690 §8.1.2.5).
    pub const CONSTRUCTED: u8 = 0x20;
    /// Context-specific class bits (X.690 §8.1.2.2).
    pub const CONTEXT: u8 = 0x80;

    /// `[n]` constructed, e.g. an EXPLICIT tag or an IMPLICIT SET/SEQUENCE.
    pub const fn context_constructed(n: u8) -> u8 {
        CONTEXT | CONSTRUCTED | n
    }

    /// `[n]` primitive, e.g. an IMPLICIT OCTET STRING.
    pub const fn context_primitive(n: u8) -> u8 {
        CONTEXT | n
    }
}

/// Why the bytes are not BER we can read. Carries no input bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BerError {
    #[error("truncated input")]
    Truncated,
    #[error("high tag numbers are not supported")]
    HighTagNumber,
    #[error("invalid length encoding")]
    BadLength,
    #[error("indefinite length on a primitive element")]
    IndefinitePrimitive,
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("expected {what} (tag {expected:#04x}), found tag {found:#04x}")]
    UnexpectedTag {
        what: &'static str,
        expected: u8,
        found: u8,
    },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("trailing bytes after the element")]
    TrailingData,
    #[error("invalid {0}")]
    Invalid(&'static str),
}

impl From<BerError> for crate::error::Error {
    fn from(e: BerError) -> Self {
        crate::error::Error::Malformed(format!("BER: {e}"))
    }
}

pub type BerResult<T> = Result<T, BerError>;

/// One element: its identifier octet, its content, and all of its bytes as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    tag: u8,
    raw: &'a [u8],
    content: &'a [u8],
    indefinite: bool,
    depth: usize,
}

/// Reads exactly one element spanning all of `input`.
pub fn parse(input: &[u8]) -> BerResult<Tlv<'_>> {
    let (tlv, rest) = parse_prefix(input)?;
    if !rest.is_empty() {
        return Err(BerError::TrailingData);
    }
    Ok(tlv)
}

/// Reads one element from the start of `input` and returns it with the bytes after it.
pub fn parse_prefix(input: &[u8]) -> BerResult<(Tlv<'_>, &[u8])> {
    read_tlv(input, 0)
}

/// Reads one element at nesting level `depth`.
fn read_tlv(input: &[u8], depth: usize) -> BerResult<(Tlv<'_>, &[u8])> {
    if depth > MAX_DEPTH {
        return Err(BerError::TooDeep);
    }
    let (&tag, after_tag) = input.split_first().ok_or(BerError::Truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(BerError::HighTagNumber);
    }
    let (&first, mut after_len) = after_tag.split_first().ok_or(BerError::Truncated)?;
    let header_len;
    let length = match first {
        0x80 => None,
        0xff => return Err(BerError::BadLength),
        n if n < 0x80 => {
            header_len = 2;
            Some((header_len, usize::from(n)))
        }
        n => {
            let count = usize::from(n & 0x7f);
            if count > std::mem::size_of::<usize>() {
                return Err(BerError::BadLength);
            }
            let bytes = after_len.get(..count).ok_or(BerError::Truncated)?;
            after_len = &after_len[count..];
            let mut len: usize = 0;
            for &b in bytes {
                len = len
                    .checked_mul(256)
                    .and_then(|l| l.checked_add(usize::from(b)))
                    .ok_or(BerError::BadLength)?;
            }
            header_len = 2 + count;
            Some((header_len, len))
        }
    };
    match length {
        Some((header_len, len)) => {
            let end = header_len.checked_add(len).ok_or(BerError::BadLength)?;
            let raw = input.get(..end).ok_or(BerError::Truncated)?;
            let content = &raw[header_len..];
            let tlv = Tlv {
                tag,
                raw,
                content,
                indefinite: false,
                depth,
            };
            Ok((tlv, &input[end..]))
        }
        None => read_indefinite(input, tag, after_len, depth),
    }
}

/// X.690 §8.1.3.6: an indefinite length runs until the end-of-contents octets `00 00`,
/// so the children must be walked to find where the element ends.
fn read_indefinite<'a>(
    input: &'a [u8],
    tag: u8,
    body: &'a [u8],
    depth: usize,
) -> BerResult<(Tlv<'a>, &'a [u8])> {
    if tag & tag::CONSTRUCTED == 0 {
        return Err(BerError::IndefinitePrimitive);
    }
    let header_len: usize = 2;
    let mut pos = 0usize;
    loop {
        let rest = body.get(pos..).ok_or(BerError::Truncated)?;
        if rest.starts_with(&[0, 0]) {
            let content = &body[..pos];
            let end = header_len
                .checked_add(pos)
                .and_then(|e| e.checked_add(2))
                .ok_or(BerError::BadLength)?;
            let raw = input.get(..end).ok_or(BerError::Truncated)?;
            let tlv = Tlv {
                tag,
                raw,
                content,
                indefinite: true,
                depth,
            };
            return Ok((tlv, &input[end..]));
        }
        let (child, _) = read_tlv(rest, depth + 1)?;
        pos = pos
            .checked_add(child.raw.len())
            .ok_or(BerError::BadLength)?;
    }
}

impl<'a> Tlv<'a> {
    /// The identifier octet.
    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// Every byte of the element as received: identifier, length, content and, for an
    /// indefinite length, the end-of-contents octets.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The content octets (without end-of-contents octets).
    pub fn content(&self) -> &'a [u8] {
        self.content
    }

    pub fn is_constructed(&self) -> bool {
        self.tag & tag::CONSTRUCTED != 0
    }

    pub fn is_indefinite(&self) -> bool {
        self.indefinite
    }

    /// Whether this is `[n]`, primitive or constructed.
    pub fn is_context(&self, n: u8) -> bool {
        self.tag & !tag::CONSTRUCTED == tag::context_primitive(n)
    }

    /// Fails unless the identifier octet is exactly `expected`.
    pub fn expect(self, expected: u8, what: &'static str) -> BerResult<Self> {
        if self.tag == expected {
            Ok(self)
        } else {
            Err(BerError::UnexpectedTag {
                what,
                expected,
                found: self.tag,
            })
        }
    }

    /// The children of a constructed element.
    pub fn children(&self) -> BerResult<Children<'a>> {
        if !self.is_constructed() {
            return Err(BerError::Invalid(
                "primitive element where constructed expected",
            ));
        }
        Ok(Children {
            rest: self.content,
            depth: self.depth + 1,
        })
    }

    /// The children of a SEQUENCE.
    pub fn sequence(self, what: &'static str) -> BerResult<Children<'a>> {
        self.expect(tag::SEQUENCE, what)?.children()
    }

    /// The children of a SET (or SET OF).
    pub fn set(self, what: &'static str) -> BerResult<Children<'a>> {
        self.expect(tag::SET, what)?.children()
    }

    /// The single element inside an EXPLICIT `[n]` tag.
    pub fn explicit(self, n: u8, what: &'static str) -> BerResult<Tlv<'a>> {
        let mut inner = self.expect(tag::context_constructed(n), what)?.children()?;
        let value = inner.required(what)?;
        inner.finish()?;
        Ok(value)
    }

    /// An OBJECT IDENTIFIER.
    pub fn oid(&self) -> BerResult<ObjectIdentifier> {
        self.expect(tag::OID, "OBJECT IDENTIFIER")?;
        ObjectIdentifier::from_bytes(self.content).map_err(|_| BerError::Invalid("OID"))
    }

    /// The content octets of an INTEGER (big-endian two's complement, as received).
    pub fn integer_bytes(&self) -> BerResult<&'a [u8]> {
        self.expect(tag::INTEGER, "INTEGER")?;
        if self.content.is_empty() {
            return Err(BerError::Invalid("empty INTEGER"));
        }
        Ok(self.content)
    }

    /// A small non-negative INTEGER, e.g. a version number.
    pub fn small_uint(&self) -> BerResult<u32> {
        let bytes = self.integer_bytes()?;
        if bytes.len() > 4 || bytes[0] & 0x80 != 0 {
            return Err(BerError::Invalid("version number"));
        }
        Ok(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
    }

    /// An OCTET STRING, primitive or constructed (X.690 §8.7), reassembled.
    pub fn octet_string(&self) -> BerResult<Cow<'a, [u8]>> {
        if self.tag & !tag::CONSTRUCTED != tag::OCTET_STRING {
            return Err(BerError::UnexpectedTag {
                what: "OCTET STRING",
                expected: tag::OCTET_STRING,
                found: self.tag,
            });
        }
        self.string_value()
    }

    /// An `[n] IMPLICIT OCTET STRING` (such as encryptedContent, RFC 5652 §6.1),
    /// primitive (`0x80|n`) or constructed (`0xA0|n`) with OCTET STRING segments.
    pub fn implicit_octet_string(&self, n: u8) -> BerResult<Cow<'a, [u8]>> {
        if !self.is_context(n) {
            return Err(BerError::UnexpectedTag {
                what: "[n] IMPLICIT OCTET STRING",
                expected: tag::context_primitive(n),
                found: self.tag,
            });
        }
        self.string_value()
    }

    /// The value of a string type: the content when primitive, the concatenation of the
    /// segments when constructed (X.690 §8.7.3.2: each segment is itself an OCTET
    /// STRING, possibly constructed again; depth bounds the recursion).
    fn string_value(&self) -> BerResult<Cow<'a, [u8]>> {
        if !self.is_constructed() {
            return Ok(Cow::Borrowed(self.content));
        }
        let mut out = Vec::with_capacity(self.content.len());
        let mut segments = self.children()?;
        while let Some(segment) = segments.next_tlv()? {
            out.extend_from_slice(&segment.octet_string()?);
        }
        Ok(Cow::Owned(out))
    }

    /// The content of a BIT STRING with no unused bits (keys and signatures).
    pub fn bit_string_bytes(&self) -> BerResult<&'a [u8]> {
        self.expect(tag::BIT_STRING, "BIT STRING")?;
        match self.content.split_first() {
            Some((0, bytes)) => Ok(bytes),
            _ => Err(BerError::Invalid("BIT STRING with unused bits")),
        }
    }

    /// A character string (PrintableString, UTF8String or IA5String) as text. SCEP says
    /// PrintableString; accepting the other two costs nothing and some clients use them.
    pub fn text(&self) -> BerResult<&'a str> {
        match self.tag {
            tag::PRINTABLE_STRING | tag::UTF8_STRING | tag::IA5_STRING => {
                std::str::from_utf8(self.content).map_err(|_| BerError::Invalid("string"))
            }
            found => Err(BerError::UnexpectedTag {
                what: "character string",
                expected: tag::PRINTABLE_STRING,
                found,
            }),
        }
    }
}

/// The children of a constructed element, read one by one.
#[derive(Clone, Debug)]
pub struct Children<'a> {
    rest: &'a [u8],
    depth: usize,
}

impl<'a> Children<'a> {
    /// The next child, or `None` at the end of the content.
    pub fn next_tlv(&mut self) -> BerResult<Option<Tlv<'a>>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (tlv, rest) = read_tlv(self.rest, self.depth)?;
        self.rest = rest;
        Ok(Some(tlv))
    }

    /// The next child, which must exist.
    pub fn required(&mut self, what: &'static str) -> BerResult<Tlv<'a>> {
        self.next_tlv()?.ok_or(BerError::Missing(what))
    }

    /// The identifier octet of the next child, without consuming it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next child if it carries the identifier octet `tag`.
    pub fn optional(&mut self, tag: u8) -> BerResult<Option<Tlv<'a>>> {
        if self.peek_tag() == Some(tag) {
            self.next_tlv()
        } else {
            Ok(None)
        }
    }

    /// The next child if it is `[n]`, primitive or constructed.
    pub fn optional_context(&mut self, n: u8) -> BerResult<Option<Tlv<'a>>> {
        match self.peek_tag() {
            Some(t) if t & !tag::CONSTRUCTED == tag::context_primitive(n) => self.next_tlv(),
            _ => Ok(None),
        }
    }

    /// Every remaining child.
    pub fn collect_all(mut self) -> BerResult<Vec<Tlv<'a>>> {
        let mut all = Vec::new();
        while let Some(tlv) = self.next_tlv()? {
            all.push(tlv);
        }
        Ok(all)
    }

    /// Fails if children remain (for structures whose end is fixed).
    pub fn finish(&self) -> BerResult<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(BerError::TrailingData)
        }
    }

    /// Whether no child remains.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// DER writing. Everything we emit is DER (X.690 §10); the builders assemble elements
// from raw bytes (copied client certificates, already encoded attributes), so the one
// primitive they need is "this identifier, then the DER length, then these bytes".
// Typed values with rules of their own (strings, times) go through `der`.
// ---------------------------------------------------------------------------------------

/// Encodes `[identifier][DER length][content...]`, the content given in parts.
/// Infallible: the definite length form (X.690 §8.1.3.5) covers any `usize`.
pub fn der_tlv(identifier: u8, parts: &[&[u8]]) -> Vec<u8> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total.saturating_add(10));
    out.push(identifier);
    push_length(&mut out, total);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// X.690 §10.1: the definite form, in the minimum number of octets.
fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    let significant = &bytes[skip..];
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

/// A SEQUENCE of already encoded elements.
pub fn der_sequence(parts: &[&[u8]]) -> Vec<u8> {
    der_tlv(tag::SEQUENCE, parts)
}

/// A SET OF already encoded elements, sorted as X.690 §11.6 requires for DER: by their
/// encodings, compared as octet strings.
pub fn der_set_of(mut elements: Vec<Vec<u8>>) -> Vec<u8> {
    elements.sort();
    let parts: Vec<&[u8]> = elements.iter().map(Vec::as_slice).collect();
    der_tlv(tag::SET, &parts)
}

/// An OBJECT IDENTIFIER.
pub fn der_oid(oid: &ObjectIdentifier) -> Vec<u8> {
    der_tlv(tag::OID, &[oid.as_bytes()])
}

/// An OCTET STRING.
pub fn der_octet_string(bytes: &[u8]) -> Vec<u8> {
    der_tlv(tag::OCTET_STRING, &[bytes])
}

/// A small non-negative INTEGER (versions).
pub fn der_small_uint(value: u8) -> Vec<u8> {
    if value & 0x80 != 0 {
        der_tlv(tag::INTEGER, &[&[0, value]])
    } else {
        der_tlv(tag::INTEGER, &[&[value]])
    }
}

/// A NULL.
pub const DER_NULL: [u8; 2] = [tag::NULL, 0];

/// A string type through `der`, which checks the character set (PrintableString's
/// X.680 §41.4 alphabet, UTF-8 validity).
pub fn der_string<T: Encode>(value: &T) -> Result<Vec<u8>, der::Error> {
    value.to_der()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_and_indefinite_lengths() {
        // SEQUENCE { INTEGER 1, OCTET STRING "ab" } in definite form.
        let definite = [0x30, 0x07, 0x02, 0x01, 0x01, 0x04, 0x02, b'a', b'b'];
        let tlv = parse(&definite).unwrap();
        let mut seq = tlv.sequence("test").unwrap();
        assert_eq!(seq.required("int").unwrap().small_uint().unwrap(), 1);
        assert_eq!(&*seq.required("os").unwrap().octet_string().unwrap(), b"ab");
        assert!(seq.next_tlv().unwrap().is_none());

        // The same with an indefinite length and a constructed, indefinite OCTET STRING.
        let indefinite = [
            0x30, 0x80, 0x02, 0x01, 0x01, 0x24, 0x80, 0x04, 0x01, b'a', 0x04, 0x01, b'b', 0x00,
            0x00, 0x00, 0x00,
        ];
        let tlv = parse(&indefinite).unwrap();
        assert!(tlv.is_indefinite());
        assert_eq!(tlv.raw(), &indefinite[..]);
        let mut seq = tlv.sequence("test").unwrap();
        assert_eq!(seq.required("int").unwrap().small_uint().unwrap(), 1);
        assert_eq!(&*seq.required("os").unwrap().octet_string().unwrap(), b"ab");
        assert!(seq.next_tlv().unwrap().is_none());
    }

    #[test]
    fn constructed_implicit_octet_string() {
        // [0] IMPLICIT constructed, definite, with two segments (micromdm scepclient).
        let bytes = [0xa0, 0x08, 0x04, 0x02, 1, 2, 0x04, 0x02, 3, 4];
        let tlv = parse(&bytes).unwrap();
        assert_eq!(&*tlv.implicit_octet_string(0).unwrap(), &[1, 2, 3, 4]);
        let prim = [0x80, 0x02, 9, 9];
        assert_eq!(
            &*parse(&prim).unwrap().implicit_octet_string(0).unwrap(),
            &[9, 9]
        );
    }

    #[test]
    fn hostile_lengths_and_nesting() {
        assert_eq!(parse(&[]), Err(BerError::Truncated));
        assert_eq!(parse(&[0x30]), Err(BerError::Truncated));
        assert_eq!(
            parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(BerError::Truncated)
        );
        assert_eq!(
            parse(&[0x30, 0x89, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            Err(BerError::BadLength)
        );
        assert_eq!(
            parse(&[0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(BerError::BadLength)
        );
        assert_eq!(
            parse(&[0x04, 0x80, 0, 0]),
            Err(BerError::IndefinitePrimitive)
        );
        assert_eq!(parse(&[0x1f, 0x01, 0x00]), Err(BerError::HighTagNumber));
        // 1000 nested indefinite SEQUENCEs: refused, no stack overflow.
        let mut deep = Vec::new();
        for _ in 0..1000 {
            deep.extend_from_slice(&[0x30, 0x80]);
        }
        for _ in 0..1000 {
            deep.extend_from_slice(&[0, 0]);
        }
        assert_eq!(parse(&deep), Err(BerError::TooDeep));
        // Deep definite nesting is refused when walked.
        let mut nested = vec![0x05, 0x00];
        for _ in 0..100 {
            nested = der_sequence(&[&nested]);
        }
        let mut tlv = parse(&nested).unwrap();
        let err = loop {
            match tlv.children().and_then(|mut c| c.required("child")) {
                Ok(child) => tlv = child,
                Err(e) => break e,
            }
        };
        assert_eq!(err, BerError::TooDeep);
        // Deeply nested constructed OCTET STRING segments are refused too.
        let mut os = vec![0x04, 0x01, 0xaa];
        for _ in 0..40 {
            let mut outer = vec![0x24, os.len() as u8];
            outer.extend_from_slice(&os);
            os = outer;
        }
        assert_eq!(parse(&os).unwrap().octet_string(), Err(BerError::TooDeep));
    }

    #[test]
    fn writing_is_der() {
        let long = vec![0u8; 300];
        let os = der_octet_string(&long);
        assert_eq!(&os[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let set = der_set_of(vec![vec![0x02, 0x01, 0x05], vec![0x02, 0x01, 0x01]]);
        assert_eq!(set, vec![0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x05]);
        assert_eq!(der_tlv(0xa0, &[&[0x05, 0x00]]), vec![0xa0, 2, 5, 0]);
        assert_eq!(der_tlv(0x80, &[&[1]]), vec![0x80, 1, 1]);
        assert_eq!(der_small_uint(1), vec![2, 1, 1]);
        let big = vec![0u8; 70000];
        assert_eq!(
            &der_octet_string(&big)[..5],
            &[0x04, 0x83, 0x01, 0x11, 0x70]
        );
        let oid = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
        assert_eq!(der_oid(&oid), oid.to_der().unwrap());
    }
}
