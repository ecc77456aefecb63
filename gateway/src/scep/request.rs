//! Reading a pkiMessage (RFC 8894 §3.2): SignedData → signed attributes → signature
//! check → EnvelopedData → decrypted messageData.

use crate::cms::algorithms::{ContentCipher, Digest};
use crate::error::Result;
use crate::ra::RaKeys;
use crate::scep::message::{MessageType, Nonce, TransactionId};

/// Which legacy algorithms this server accepts (config `[crypto]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CryptoPolicy {
    /// Accept DES and 3DES content encryption (and answer in them).
    pub legacy_des: bool,
}

/// What every request carries outside its envelope: enough to sign and address a reply.
#[derive(Debug, Clone)]
pub struct RequestHeader {
    pub message_type: MessageType,
    pub transaction_id: TransactionId,
    pub sender_nonce: Nonce,
    /// The signer certificate exactly as received (self-signed for PKCSReq, the
    /// certificate being renewed for RenewalReq). The reply is encrypted to it.
    pub signer_certificate: Vec<u8>,
    /// The request's digest; the reply uses it when it is SHA-2, else SHA-256.
    pub digest: Digest,
}

/// A parsed, not yet verified, pkiMessage.
#[derive(Debug)]
pub struct SignedRequest {
    pub header: RequestHeader,
}

impl SignedRequest {
    /// Parses the outer SignedData and the SCEP signed attributes. Fails with
    /// `Error::Malformed` (HTTP 400) when there is nothing we could address a reply to.
    pub fn parse(_bytes: &[u8]) -> Result<Self> {
        todo!()
    }

    /// Checks the signature over the signed attributes as received
    /// (`Error::BadSignature`).
    pub fn verify(&self) -> Result<()> {
        todo!()
    }

    /// Decrypts the envelope with the RA key its RecipientInfo names and decodes the
    /// messageData for the message type.
    pub fn open(self, _ra: &RaKeys, _policy: CryptoPolicy) -> Result<Request> {
        todo!()
    }
}

/// A verified and decrypted request.
#[derive(Debug)]
pub struct Request {
    pub header: RequestHeader,
    /// The content cipher the client used; the reply uses the same.
    pub cipher: ContentCipher,
    pub body: RequestBody,
}

/// The decrypted messageData (RFC 8894 §3.3).
#[derive(Debug)]
pub enum RequestBody {
    /// PKCSReq and RenewalReq: a PKCS#10 CertificationRequest, DER.
    CertificationRequest(Vec<u8>),
    /// CertPoll: IssuerAndSubject; both are DER `Name`s.
    CertPoll { issuer: Vec<u8>, subject: Vec<u8> },
    /// GetCert and GetCRL: IssuerAndSerialNumber; `issuer` is a DER `Name`, `serial` the
    /// INTEGER's content bytes.
    IssuerAndSerial { issuer: Vec<u8>, serial: Vec<u8> },
}
