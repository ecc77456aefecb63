//! Building a CertRep (RFC 8894 §3.3.2).

use std::sync::Arc;

use crate::cms::algorithms::ContentCipher;
use crate::error::Result;
use crate::ra::Credential;
use crate::scep::message::FailInfo;
use crate::scep::request::RequestHeader;

/// What the CertRep says.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// SUCCESS with certificates: the issued one first, then the CA chain.
    Issued { certificates: Vec<Arc<[u8]>> },
    /// SUCCESS with a CRL (GetCRL).
    Crl(Vec<u8>),
    /// PENDING: the client polls with CertPoll.
    Pending,
    /// FAILURE with failInfo and a short failInfoText.
    Failure { info: FailInfo, text: String },
}

/// Builds the signed (and, for SUCCESS, enveloped) CertRep answering `request`.
/// `cipher` is the request's content cipher; `None` only when the request could not be
/// decrypted, in which case the outcome is a FAILURE and nothing is enveloped.
pub fn build(
    _signer: &Credential,
    _request: &RequestHeader,
    _cipher: Option<ContentCipher>,
    _outcome: &Outcome,
) -> Result<Vec<u8>> {
    todo!()
}
