//! The vocabulary of a SCEP pkiMessage (RFC 8894 §3.2.1): message types, statuses,
//! failure reasons, nonces and transaction identifiers, and the OIDs of the signed
//! attributes that carry them.

use std::fmt;

use const_oid::ObjectIdentifier;

/// `id-attribute` arc of SCEP: 2.16.840.1.113733.1.9 (RFC 8894 §3.2.1).
pub mod oid {
    use const_oid::ObjectIdentifier;
    pub const MESSAGE_TYPE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.2");
    pub const PKI_STATUS: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.3");
    pub const FAIL_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.4");
    pub const SENDER_NONCE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.5");
    pub const RECIPIENT_NONCE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.6");
    pub const TRANSACTION_ID: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.7");
    /// id-pkix-failInfoText, RFC 8894 §3.2.1.4.
    pub const FAIL_INFO_TEXT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.24.1");
}

/// `messageType` (RFC 8894 §3.2.1.2), carried as a PrintableString of its decimal value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    CertRep,
    RenewalReq,
    PkcsReq,
    /// Called GetCertInitial before RFC 8894.
    CertPoll,
    GetCert,
    GetCrl,
}

impl MessageType {
    pub fn code(self) -> u8 {
        match self {
            MessageType::CertRep => 3,
            MessageType::RenewalReq => 17,
            MessageType::PkcsReq => 19,
            MessageType::CertPoll => 20,
            MessageType::GetCert => 21,
            MessageType::GetCrl => 22,
        }
    }

    /// Parses the decimal PrintableString value.
    pub fn from_code(text: &str) -> Option<Self> {
        Some(match text.trim() {
            "3" => MessageType::CertRep,
            "17" => MessageType::RenewalReq,
            "19" => MessageType::PkcsReq,
            "20" => MessageType::CertPoll,
            "21" => MessageType::GetCert,
            "22" => MessageType::GetCrl,
            _ => return None,
        })
    }

    /// A stable lower-case name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            MessageType::CertRep => "certrep",
            MessageType::RenewalReq => "renewalreq",
            MessageType::PkcsReq => "pkcsreq",
            MessageType::CertPoll => "certpoll",
            MessageType::GetCert => "getcert",
            MessageType::GetCrl => "getcrl",
        }
    }
}

/// `pkiStatus` (RFC 8894 §3.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiStatus {
    Success,
    Failure,
    Pending,
}

impl PkiStatus {
    pub fn code(self) -> &'static str {
        match self {
            PkiStatus::Success => "0",
            PkiStatus::Failure => "2",
            PkiStatus::Pending => "3",
        }
    }

    pub fn from_code(text: &str) -> Option<Self> {
        match text.trim() {
            "0" => Some(PkiStatus::Success),
            "2" => Some(PkiStatus::Failure),
            "3" => Some(PkiStatus::Pending),
            _ => None,
        }
    }
}

/// `failInfo` (RFC 8894 §3.2.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailInfo {
    /// Unrecognized or unsupported algorithm.
    BadAlg,
    /// Integrity check (signature, decryption) failed.
    BadMessageCheck,
    /// Transaction not permitted or supported.
    BadRequest,
    /// The signingTime attribute was not close enough to the system time.
    BadTime,
    /// No certificate could be identified matching the provided criteria.
    BadCertId,
}

impl FailInfo {
    pub fn code(self) -> &'static str {
        match self {
            FailInfo::BadAlg => "0",
            FailInfo::BadMessageCheck => "1",
            FailInfo::BadRequest => "2",
            FailInfo::BadTime => "3",
            FailInfo::BadCertId => "4",
        }
    }

    pub fn from_code(text: &str) -> Option<Self> {
        Some(match text.trim() {
            "0" => FailInfo::BadAlg,
            "1" => FailInfo::BadMessageCheck,
            "2" => FailInfo::BadRequest,
            "3" => FailInfo::BadTime,
            "4" => FailInfo::BadCertId,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FailInfo::BadAlg => "badAlg",
            FailInfo::BadMessageCheck => "badMessageCheck",
            FailInfo::BadRequest => "badRequest",
            FailInfo::BadTime => "badTime",
            FailInfo::BadCertId => "badCertID",
        }
    }
}

/// `senderNonce` / `recipientNonce` (RFC 8894 §3.2.1.5): a 16-byte OCTET STRING.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; 16]);

impl Nonce {
    /// A fresh random nonce, for the senderNonce of every CertRep.
    pub fn random() -> Self {
        let mut n = [0u8; 16];
        aws_lc_rs::rand::fill(&mut n).expect("the system RNG does not fail");
        Nonce(n)
    }

    /// RFC 8894 says 16 bytes; a nonce of another length is refused rather than truncated,
    /// because the reply must echo it exactly.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Nonce)
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", hex::encode(self.0))
    }
}

/// `transactionID` (RFC 8894 §3.2.1.1): a PrintableString the client chooses, usually a
/// hash of its public key. Bounded so that a hostile client cannot make us store megabytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TransactionId(String);

impl TransactionId {
    /// The longest transactionID accepted. Real clients send 20–64 characters (a hex or
    /// base64 hash, or certmonger's long decimal number).
    pub const MAX_LEN: usize = 256;

    pub fn new(text: String) -> Option<Self> {
        (!text.is_empty() && text.len() <= Self::MAX_LEN).then_some(TransactionId(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every attribute OID used by SCEP, for callers that only need to name them.
pub fn is_scep_attribute(oid: &ObjectIdentifier) -> bool {
    [
        oid::MESSAGE_TYPE,
        oid::PKI_STATUS,
        oid::FAIL_INFO,
        oid::SENDER_NONCE,
        oid::RECIPIENT_NONCE,
        oid::TRANSACTION_ID,
    ]
    .contains(oid)
}
