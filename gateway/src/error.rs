//! One error type for everything that can go wrong with a SCEP request, and the one
//! place that decides how each is answered.
//!
//! RFC 8894 §3.3.2 answers a request it can parse with a signed CertRep whose pkiStatus
//! is FAILURE and whose failInfo says why; a request we cannot even read (no signer
//! certificate, no transactionID, no senderNonce to echo) gets an HTTP 4xx instead,
//! because there is nobody to sign and encrypt an answer to.

use hyper::StatusCode;

use crate::scep::message::FailInfo;

/// How an [`Error`] reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A signed CertRep with pkiStatus FAILURE and this failInfo.
    Failure(FailInfo),
    /// A plain HTTP error; no CertRep can be built.
    Http(StatusCode),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a pkiMessage we can reply to (HTTP 400).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The body or URI exceeds the configured limit (HTTP 413 / 414).
    #[error("request too large")]
    TooLarge,
    /// The client did not send the body it announced within `request_timeout_secs`
    /// (HTTP 408, RFC 9110 §15.5.9): its fault, unlike a slow dependency (503).
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// An unknown `operation` (HTTP 400).
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
    /// An operation this server does not offer in its configuration, e.g. GetNextCACert
    /// without a next set (HTTP 404).
    #[error("not available: {0}")]
    NotAvailable(&'static str),

    /// The request's signature does not verify (badMessageCheck).
    #[error("signature check failed: {0}")]
    BadSignature(String),
    /// The envelope could not be opened. Deliberately carries no detail: a wrong key, a
    /// bad PKCS#1 padding, a bad CBC padding and undecodable plaintext must be
    /// indistinguishable to the client (no padding oracle).
    #[error("the envelope could not be decrypted")]
    Undecryptable,
    /// An algorithm we do not accept, e.g. single DES with the legacy switch off (badAlg).
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// The request is understood but refused: wrong challenge, CSR against policy,
    /// transactionID reused with another key, renewal not allowed (badRequest).
    #[error("request refused: {0}")]
    Refused(String),
    /// No certificate or CRL matches what GetCert/GetCRL/CertPoll asked for (badCertID).
    #[error("no matching certificate: {0}")]
    NotFound(String),
    /// A signing time outside the allowed window (badTime).
    #[error("bad time: {0}")]
    BadTime(String),

    /// A dependency (CA, HSM, store) cannot serve this request now (HTTP 503): the client
    /// retries later with the same transactionID, and nothing has been issued.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// The one mapping from error to answer.
    pub fn answer(&self) -> Answer {
        match self {
            Error::Malformed(_) | Error::UnknownOperation(_) => {
                Answer::Http(StatusCode::BAD_REQUEST)
            }
            Error::TooLarge => Answer::Http(StatusCode::PAYLOAD_TOO_LARGE),
            Error::BodyTimeout => Answer::Http(StatusCode::REQUEST_TIMEOUT),
            Error::NotAvailable(_) => Answer::Http(StatusCode::NOT_FOUND),
            Error::Unavailable(_) => Answer::Http(StatusCode::SERVICE_UNAVAILABLE),
            Error::BadSignature(_) | Error::Undecryptable => {
                Answer::Failure(FailInfo::BadMessageCheck)
            }
            Error::UnsupportedAlgorithm(_) => Answer::Failure(FailInfo::BadAlg),
            Error::Refused(_) => Answer::Failure(FailInfo::BadRequest),
            Error::NotFound(_) => Answer::Failure(FailInfo::BadCertId),
            Error::BadTime(_) => Answer::Failure(FailInfo::BadTime),
        }
    }

    /// The failInfoText sent to the client (RFC 8894 §3.2.1.4). Short and free of
    /// anything secret; never says *why* a decryption failed.
    pub fn fail_info_text(&self) -> String {
        match self {
            Error::Undecryptable => "the envelope could not be decrypted".into(),
            Error::BadSignature(_) => "the message signature does not verify".into(),
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
