//! The RFC 4514 string form of a DER `Name` (a CSR's or a certificate's subject), for
//! the `certificate issued` log line.
//!
//! ```text
//! Name ::= CHOICE { rdnSequence RDNSequence }
//! RDNSequence ::= SEQUENCE OF RelativeDistinguishedName
//! RelativeDistinguishedName ::= SET SIZE (1..MAX) OF AttributeTypeAndValue
//! ```
//!
//! The text is exactly `x509_cert`'s `Display` of the `Name` (RDNs last to first, RFC
//! 4514 §2.1), cut at [`MAX_DISPLAY`] bytes. What differs is the cost: for each attribute
//! `x509_cert` finds the type's shortest name by scanning all of `const_oid`'s database
//! (1,139 entries), which was 0.5–0.7 % of an enrollment's CPU and grew with a
//! hostile subject's attribute count. Here the types of RFC 4514 §3's table (and a few
//! more that devices send) are found in a short list, whose names were read once from
//! `x509_cert`'s own output; any other type, and any value that is not a string, is
//! formatted by `x509_cert` itself.

use std::fmt::Write;
use std::sync::OnceLock;

use const_oid::db::{rfc3280, rfc4519};
use der::asn1::{Any, Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use der::{Decode, Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::RdnSequence;

/// The display form is cut here (it goes into logs).
pub const MAX_DISPLAY: usize = 1024;

/// The attribute types looked up without the database: RFC 4514 §3's table, plus
/// serialNumber, title, givenName, surname and emailAddress.
const COMMON: &[const_oid::ObjectIdentifier] = &[
    rfc4519::CN,
    rfc4519::O,
    rfc4519::OU,
    rfc4519::C,
    rfc4519::L,
    rfc4519::ST,
    rfc4519::STREET,
    rfc4519::DC,
    rfc4519::UID,
    rfc4519::SERIAL_NUMBER,
    rfc4519::TITLE,
    rfc4519::GIVEN_NAME,
    rfc4519::SN,
    rfc3280::EMAIL_ADDRESS,
];

/// [`COMMON`] with the names `x509_cert` prints for them: read once from its own
/// output for a sample value, so they cannot differ.
fn common_names() -> &'static [(const_oid::ObjectIdentifier, String)] {
    static NAMES: OnceLock<Vec<(const_oid::ObjectIdentifier, String)>> = OnceLock::new();
    NAMES.get_or_init(|| {
        COMMON
            .iter()
            .filter_map(|oid| {
                let sample = AttributeTypeAndValue {
                    oid: *oid,
                    value: Any::new(Tag::Utf8String, b"x".as_slice()).ok()?,
                };
                let name = sample.to_string().strip_suffix("=x")?.to_owned();
                // A type without a name prints as its dotted OID and `#hex`.
                (!name.contains('.')).then_some((*oid, name))
            })
            .collect()
    })
}

/// The RFC 4514 form of a DER `Name`, cut at [`MAX_DISPLAY`] bytes (with `…`).
pub fn display(der: &[u8]) -> der::Result<String> {
    // `Name ::= CHOICE { rdnSequence RDNSequence }`: the same encoding.
    let name = RdnSequence::from_der(der)?;
    let mut text = String::with_capacity(64);
    let rdns: &Vec<_> = name.as_ref();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        for (j, atv) in rdn.as_ref().iter().enumerate() {
            if i > 0 || j > 0 {
                text.push(if j == 0 { ',' } else { '+' });
            }
            attribute(&mut text, atv);
        }
        if text.len() > MAX_DISPLAY {
            break;
        }
    }
    if text.len() > MAX_DISPLAY {
        let mut cut = MAX_DISPLAY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    Ok(text)
}

/// One `type=value`, escaped as RFC 4514 §2.4 (and `x509_cert`) escape it.
fn attribute(text: &mut String, atv: &AttributeTypeAndValue) {
    let name = common_names()
        .iter()
        .find(|(oid, _)| *oid == atv.oid)
        .map(|(_, name)| name.as_str());
    let value = match atv.value.tag() {
        Tag::PrintableString => PrintableStringRef::try_from(&atv.value)
            .ok()
            .map(|s| s.as_str()),
        Tag::Utf8String => Utf8StringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
        Tag::Ia5String => Ia5StringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
        Tag::TeletexString => TeletexStringRef::try_from(&atv.value)
            .ok()
            .map(|s| s.as_str()),
        _ => None,
    };
    let (Some(name), Some(value)) = (name, value) else {
        // Writing into a String cannot fail.
        let _ = write!(text, "{atv}");
        return;
    };
    text.push_str(name);
    text.push('=');
    let mut chars = value.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' if i == 0 => text.push_str("\\#"),
            ' ' if i == 0 || chars.peek().is_none() => text.push_str("\\ "),
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                text.push('\\');
                text.push(c);
            }
            '\x00'..='\x1f' | '\x7f' => {
                let _ = write!(text, "\\{:02x}", c as u8);
            }
            _ => text.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::asn1::SetOfVec;
    use der::Encode;
    use x509_cert::name::{Name, RelativeDistinguishedName};

    fn atv(oid: const_oid::ObjectIdentifier, tag: Tag, value: &[u8]) -> AttributeTypeAndValue {
        AttributeTypeAndValue {
            oid,
            value: Any::new(tag, value).unwrap(),
        }
    }

    fn name(rdns: Vec<Vec<AttributeTypeAndValue>>) -> Vec<u8> {
        let rdns = rdns
            .into_iter()
            .map(|atvs| RelativeDistinguishedName::from(SetOfVec::try_from(atvs).unwrap()))
            .collect::<Vec<_>>();
        RdnSequence::from(rdns).to_der().unwrap()
    }

    /// The same text as `x509_cert`'s `Display`, which the logs showed before.
    fn same_as_x509_cert(der: &[u8]) {
        let expected = Name::from_der(der).unwrap().to_string();
        assert_eq!(display(der).unwrap(), expected);
    }

    #[test]
    fn every_common_type_has_its_database_name() {
        assert_eq!(common_names().len(), COMMON.len());
        let cn = common_names().iter().find(|(oid, _)| *oid == rfc4519::CN);
        assert_eq!(cn.map(|(_, n)| n.as_str()), Some("CN"));
    }

    #[test]
    fn common_types_print_as_x509_cert_prints_them() {
        for oid in COMMON {
            for tag in [
                Tag::Utf8String,
                Tag::PrintableString,
                Tag::Ia5String,
                Tag::TeletexString,
            ] {
                same_as_x509_cert(&name(vec![vec![atv(*oid, tag, b"device 42")]]));
            }
        }
    }

    #[test]
    fn escapes_sequences_and_multi_valued_rdns_match() {
        let utf8 = |s: &str| atv(rfc4519::CN, Tag::Utf8String, s.as_bytes());
        for value in [
            "#leading hash",
            " leading and trailing ",
            "a,b+c;d<e>f\"g\\h",
            "tab\there\x7f",
            "ünïcödé",
            "",
        ] {
            same_as_x509_cert(&name(vec![vec![utf8(value)]]));
        }
        same_as_x509_cert(&name(vec![
            vec![atv(rfc4519::C, Tag::PrintableString, b"DE")],
            vec![atv(rfc4519::O, Tag::Utf8String, b"Example")],
            vec![
                atv(rfc4519::OU, Tag::Utf8String, b"Ops"),
                atv(rfc4519::CN, Tag::Utf8String, b"host-1"),
            ],
        ]));
        same_as_x509_cert(&name(vec![]));
    }

    #[test]
    fn other_types_and_values_fall_back_to_x509_cert() {
        let private = const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.99999.1");
        same_as_x509_cert(&name(vec![
            vec![atv(private, Tag::Utf8String, b"x")],
            vec![atv(rfc4519::CN, Tag::BmpString, &[0, b'a'])],
            vec![atv(rfc4519::CN, Tag::OctetString, b"\x01\x02")],
            vec![atv(rfc4519::TITLE, Tag::Utf8String, b"Dr.")],
        ]));
    }

    #[test]
    fn a_long_subject_is_cut_at_a_character_boundary() {
        let long = "é".repeat(400);
        let atvs = (0..4)
            .map(|_| vec![atv(rfc4519::OU, Tag::Utf8String, long.as_bytes())])
            .collect();
        let text = display(&name(atvs)).unwrap();
        assert!(text.ends_with('…'));
        assert!(text.len() <= MAX_DISPLAY + '…'.len_utf8());
        assert!(text.starts_with("OU=éé"));
    }
}
