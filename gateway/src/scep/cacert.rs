//! GetCACert and GetNextCACert (RFC 8894 §4.2, §4.6): the certificates a client needs
//! before it can encrypt a request to the RA and verify the CA.

use std::sync::Arc;

use bytes::Bytes;

use crate::cms::algorithms::Digest;
use crate::cms::signed;
use crate::error::Result;
use crate::ra::{Credential, RaKeys};

/// `application/x-x509-ca-cert`: one DER certificate, for a CA that is its own RA.
pub const CA_CERT: &str = "application/x-x509-ca-cert";
/// `application/x-x509-ca-ra-cert`: a certs-only SignedData with RA and CA certificates.
pub const CA_RA_CERT: &str = "application/x-x509-ca-ra-cert";
/// `application/x-x509-next-ca-cert`: a SignedData signed by the current RA.
pub const NEXT_CA_CERT: &str = "application/x-x509-next-ca-cert";

/// A prepared answer: built once at start (and on reload), served as is.
#[derive(Debug, Clone)]
pub struct CaCertAnswer {
    pub content_type: &'static str,
    pub body: Bytes,
}

/// GetCACert (RFC 8894 §4.2.1): RA certificates first, then the CA chain, because
/// sscep and CertNanny take the first certificate as the one to encrypt to. When the RA
/// *is* the CA and there is nothing else to send, the lone DER certificate (§4.2.1.1).
pub fn ca_cert(ra: &RaKeys, ca_chain: &[Arc<[u8]>]) -> CaCertAnswer {
    let ra_certs = ra.certificates();
    if ra_certs.len() == 1 && ca_chain.len() == 1 && ra_certs[0] == ca_chain[0] {
        return CaCertAnswer {
            content_type: CA_CERT,
            body: Bytes::copy_from_slice(&ca_chain[0]),
        };
    }
    let mut all: Vec<&[u8]> = ra_certs.iter().map(|c| &c[..]).collect();
    for cert in ca_chain {
        if !all.contains(&&cert[..]) {
            all.push(cert);
        }
    }
    CaCertAnswer {
        content_type: CA_RA_CERT,
        body: Bytes::from(signed::certs_only(&all)),
    }
}

/// GetNextCACert (RFC 8894 §4.6.1): "a SignedData CMS message, signed by the current CA
/// signing key" whose content is a certs-only SignedData of the next certificates. The
/// current RA signs it (the CA key may be elsewhere or offline).
pub fn next_ca_cert(signer: &Credential, next: &[Arc<[u8]>]) -> Result<CaCertAnswer> {
    let certs: Vec<&[u8]> = next.iter().map(|c| &c[..]).collect();
    let inner = signed::certs_only(&certs);
    let body = signed::build_signed(signer, Digest::Sha256, &signed::oid::DATA, &inner, &[])?;
    Ok(CaCertAnswer {
        content_type: NEXT_CA_CERT,
        body: Bytes::from(body),
    })
}
