//! The few fields of an X.509 certificate (RFC 5280 §4.1) the RA needs, as slices of
//! the certificate's own bytes.
//!
//! Client certificates are never re-encoded: x509-cert's default profile refuses
//! certmonger's 32-byte serials and rewrites pre-2050 GeneralizedTime as UTCTime, and
//! either change would break the IssuerAndSerialNumber a reply must echo. So this module
//! only splits the TBSCertificate into its raw elements.

use der::{Decode, Reader, SliceReader, Tag, TagNumber};

use crate::error::{Error, Result};

/// Raw DER slices of a certificate's identifying fields.
#[derive(Debug, Clone, Copy)]
pub struct CertificateFields<'a> {
    /// The serial number INTEGER, whole TLV.
    pub serial_tlv: &'a [u8],
    /// The issuer Name, whole TLV.
    pub issuer: &'a [u8],
    /// The Validity SEQUENCE, whole TLV.
    pub validity: &'a [u8],
    /// The subject Name, whole TLV.
    pub subject: &'a [u8],
    /// The SubjectPublicKeyInfo, whole TLV.
    pub spki: &'a [u8],
}

impl<'a> CertificateFields<'a> {
    pub fn parse(der: &'a [u8]) -> Result<Self> {
        split(der).map_err(|e| Error::Malformed(format!("unreadable certificate: {e}")))
    }

    /// The serial's content bytes (big-endian two's complement, as encoded).
    pub fn serial(&self) -> &'a [u8] {
        der::asn1::AnyRef::from_der(self.serial_tlv)
            .map(|any| any.value())
            .unwrap_or(&[])
    }

    /// The IssuerAndSerialNumber (RFC 5652 §10.2.4) of this certificate, DER, built from
    /// the raw issuer and serial so that it matches byte for byte.
    pub fn issuer_and_serial(&self) -> Vec<u8> {
        let len = self.issuer.len() + self.serial_tlv.len();
        let mut out = Vec::with_capacity(len + 4);
        out.push(0x30);
        push_length(&mut out, len);
        out.extend_from_slice(self.issuer);
        out.extend_from_slice(self.serial_tlv);
        out
    }
}

fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn split(der: &[u8]) -> der::Result<CertificateFields<'_>> {
    let mut reader = SliceReader::new(der)?;
    let fields = reader.sequence(|cert| {
        let fields = cert.sequence(|tbs| {
            let explicit_version = Tag::ContextSpecific {
                constructed: true,
                number: TagNumber(0),
            };
            if tbs.peek_tag()? == explicit_version {
                tbs.tlv_bytes()?;
            }
            let serial_tlv = tbs.tlv_bytes()?;
            let _signature = tbs.tlv_bytes()?;
            let issuer = tbs.tlv_bytes()?;
            let validity = tbs.tlv_bytes()?;
            let subject = tbs.tlv_bytes()?;
            let spki = tbs.tlv_bytes()?;
            while !tbs.is_finished() {
                tbs.tlv_bytes()?;
            }
            Ok(CertificateFields {
                serial_tlv,
                issuer,
                validity,
                subject,
                spki,
            })
        })?;
        while !cert.is_finished() {
            cert.tlv_bytes()?;
        }
        Ok(fields)
    })?;
    reader.finish()?;
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_real_certificate() {
        let pem = include_str!("../tests/data/ra-ca.pem");
        let (_, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
        let f = CertificateFields::parse(&der).unwrap();
        assert_eq!(f.issuer, f.subject, "the test RA/CA is self-signed");
        assert_eq!(f.spki[0], 0x30);
        assert!(!f.serial().is_empty());
        let ias = f.issuer_and_serial();
        assert_eq!(ias[0], 0x30);
        assert!(ias.ends_with(f.serial_tlv));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"\x30", b"\x30\x03\x02\x01", b"\x30\x80\x00\x00"] {
            assert!(CertificateFields::parse(bad).is_err());
        }
    }
}
