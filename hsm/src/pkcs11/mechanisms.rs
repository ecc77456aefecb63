//! Which PKCS#11 mechanism does each operation of the [`crate::Key`] trait, and the
//! encodings around them.
//!
//! - RSA signatures: CKM_SHA256/384/512_RSA_PKCS (PKCS#11 3.0 Mechanisms §2.1.16, the
//!   token hashes), or, on tokens without them, CKM_RSA_PKCS (§2.1.6) over a DigestInfo
//!   hashed here (RFC 8017 §9.2); the signature bytes are the same.
//! - ECDSA: CKM_ECDSA (§2.3.7) over a hash computed here (the combined CKM_ECDSA_SHA256
//!   is rarer in tokens); the token returns raw r‖s, which X.509 and CMS carry as the DER
//!   `Ecdsa-Sig-Value` of RFC 5480 §2.2 / RFC 5758 §3.2.
//! - Key transport: CKM_RSA_PKCS (§2.1.6) for rsaEncryption and CKM_RSA_PKCS_OAEP
//!   (§2.1.8) with SHA-1 or SHA-256 and the matching MGF1, empty label (RFC 8017 §7.1).

use aws_lc_rs::digest;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::slot::Slot;
use der::asn1::UintRef;
use der::Encode;

use crate::{DecryptPadding, KeyAlgorithm, KeyError, SignatureAlgorithm};

/// The mechanisms this crate may use that the token offers (C_GetMechanismList,
/// PKCS#11 3.0 §5.5; C_GetMechanismInfo is not a substitute: SoftHSM2 answers it even
/// for mechanisms its configuration disabled). cryptoki logs an error for each vendor
/// mechanism it does not know; the gateway silences that log target.
pub(crate) fn offered(
    context: &cryptoki::context::Pkcs11,
    slot: Slot,
) -> Result<Vec<MechanismType>, cryptoki::error::Error> {
    const USED: [MechanismType; 6] = [
        MechanismType::RSA_PKCS,
        MechanismType::RSA_PKCS_OAEP,
        MechanismType::SHA256_RSA_PKCS,
        MechanismType::SHA384_RSA_PKCS,
        MechanismType::SHA512_RSA_PKCS,
        MechanismType::ECDSA,
    ];
    let list = context.get_mechanism_list(slot)?;
    Ok(USED.into_iter().filter(|m| list.contains(m)).collect())
}

/// What a key will be used for; decides which mechanisms must be present at open time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purpose {
    /// Signs CertReps, certificates or CRLs (CKA_SIGN).
    pub sign: bool,
    /// Unwraps the content-encryption key of requests (CKA_DECRYPT).
    pub decrypt: bool,
}

impl Purpose {
    pub const SIGN: Purpose = Purpose {
        sign: true,
        decrypt: false,
    };
    pub const DECRYPT: Purpose = Purpose {
        sign: false,
        decrypt: true,
    };
    pub const BOTH: Purpose = Purpose {
        sign: true,
        decrypt: true,
    };
}

/// The name PKCS#11 gives a mechanism, for messages.
pub fn name(m: MechanismType) -> &'static str {
    match m {
        MechanismType::RSA_PKCS => "CKM_RSA_PKCS",
        MechanismType::RSA_PKCS_OAEP => "CKM_RSA_PKCS_OAEP",
        MechanismType::SHA256_RSA_PKCS => "CKM_SHA256_RSA_PKCS",
        MechanismType::SHA384_RSA_PKCS => "CKM_SHA384_RSA_PKCS",
        MechanismType::SHA512_RSA_PKCS => "CKM_SHA512_RSA_PKCS",
        MechanismType::ECDSA => "CKM_ECDSA",
        MechanismType::RSA_PKCS_KEY_PAIR_GEN => "CKM_RSA_PKCS_KEY_PAIR_GEN",
        MechanismType::ECC_KEY_PAIR_GEN => "CKM_EC_KEY_PAIR_GEN",
        _ => "a mechanism",
    }
}

/// The mechanisms a key of `algorithm` needs for `purpose`, as (mechanism, alternative)
/// pairs: either one will do. The gateway signs with SHA-256 (RSA) or the curve's hash.
pub fn required(
    algorithm: KeyAlgorithm,
    purpose: Purpose,
) -> Vec<(MechanismType, Option<MechanismType>, &'static str)> {
    let mut out = Vec::new();
    match algorithm {
        KeyAlgorithm::Rsa { .. } => {
            if purpose.sign {
                out.push((
                    MechanismType::SHA256_RSA_PKCS,
                    Some(MechanismType::RSA_PKCS),
                    "RSA signing",
                ));
            }
            if purpose.decrypt {
                // rsaEncryption key transport: what Intune, Jamf and Apple send.
                out.push((MechanismType::RSA_PKCS, None, "PKCS#1 v1.5 key transport"));
            }
        }
        KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
            if purpose.sign {
                out.push((MechanismType::ECDSA, None, "ECDSA signing"));
            }
        }
    }
    out
}

/// How one signature is made on the token.
pub(crate) struct SignPlan {
    pub mechanism: Mechanism<'static>,
    /// The bytes given to C_Sign.
    pub input: Vec<u8>,
    /// The token returns raw r‖s, to be DER-encoded.
    pub ecdsa: bool,
}

/// DigestInfo prefixes of RFC 8017 §9.2, note 1.
const SHA256_PREFIX: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA384_PREFIX: &[u8] = &[
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const SHA512_PREFIX: &[u8] = &[
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

pub(crate) fn sign_plan(
    key: KeyAlgorithm,
    alg: SignatureAlgorithm,
    message: &[u8],
    offered: &[MechanismType],
) -> Result<SignPlan, KeyError> {
    use SignatureAlgorithm as S;
    let has = |m: MechanismType| offered.contains(&m);
    match (key, alg) {
        (KeyAlgorithm::Rsa { .. }, S::RsaPkcs1Sha256 | S::RsaPkcs1Sha384 | S::RsaPkcs1Sha512) => {
            let (combined, mechanism, hash, prefix) = match alg {
                S::RsaPkcs1Sha256 => (
                    MechanismType::SHA256_RSA_PKCS,
                    Mechanism::Sha256RsaPkcs,
                    &digest::SHA256,
                    SHA256_PREFIX,
                ),
                S::RsaPkcs1Sha384 => (
                    MechanismType::SHA384_RSA_PKCS,
                    Mechanism::Sha384RsaPkcs,
                    &digest::SHA384,
                    SHA384_PREFIX,
                ),
                _ => (
                    MechanismType::SHA512_RSA_PKCS,
                    Mechanism::Sha512RsaPkcs,
                    &digest::SHA512,
                    SHA512_PREFIX,
                ),
            };
            if has(combined) {
                return Ok(SignPlan {
                    mechanism,
                    input: message.to_vec(),
                    ecdsa: false,
                });
            }
            if has(MechanismType::RSA_PKCS) {
                let mut input = prefix.to_vec();
                input.extend_from_slice(digest::digest(hash, message).as_ref());
                return Ok(SignPlan {
                    mechanism: Mechanism::RsaPkcs,
                    input,
                    ecdsa: false,
                });
            }
            Err(KeyError::Unsupported(
                "the token offers neither the combined RSA mechanism nor CKM_RSA_PKCS",
            ))
        }
        (KeyAlgorithm::EcP256, S::EcdsaSha256) | (KeyAlgorithm::EcP384, S::EcdsaSha384) => {
            let hash = if alg == S::EcdsaSha256 {
                &digest::SHA256
            } else {
                &digest::SHA384
            };
            Ok(SignPlan {
                mechanism: Mechanism::Ecdsa,
                input: digest::digest(hash, message).as_ref().to_vec(),
                ecdsa: true,
            })
        }
        (KeyAlgorithm::Rsa { .. }, _) => Err(KeyError::Unsupported("ECDSA with an RSA key")),
        _ => Err(KeyError::Unsupported(
            "an EC key signs with ECDSA and its curve's digest",
        )),
    }
}

/// The decryption mechanism for a key-transport padding.
pub(crate) fn decrypt_mechanism(padding: DecryptPadding) -> Mechanism<'static> {
    let oaep =
        |hash, mgf| Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()));
    match padding {
        DecryptPadding::Pkcs1v15 => Mechanism::RsaPkcs,
        DecryptPadding::OaepSha1 => oaep(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        DecryptPadding::OaepSha256 => oaep(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    }
}

#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// Raw r‖s (PKCS#11 3.0 Mechanisms §2.3.1: each half the length of the order) to the
/// DER `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 5480 §2.2).
pub(crate) fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, KeyError> {
    if raw.is_empty() || raw.len() & 1 == 1 {
        return Err(KeyError::Operation);
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let value = EcdsaSigValue {
        r: UintRef::new(r).map_err(|_| KeyError::Operation)?,
        s: UintRef::new(s).map_err(|_| KeyError::Operation)?,
    };
    value.to_der().map_err(|_| KeyError::Operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_adds_a_zero_for_high_bits_and_strips_leading_zeros() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r has its high bit set: INTEGER needs a 0x00
        raw[31] = 1;
        raw[63] = 5; // s = 5: one content byte
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 33 + 2 + 3, 0x02, 33]);
        assert_eq!(der[4], 0);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x05]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
    }

    #[test]
    fn rsa_falls_back_to_raw_pkcs1_with_a_digest_info() {
        let plan = sign_plan(
            KeyAlgorithm::Rsa { bits: 2048 },
            SignatureAlgorithm::RsaPkcs1Sha384,
            b"m",
            &[MechanismType::RSA_PKCS],
        )
        .unwrap();
        assert_eq!(plan.input.len(), SHA384_PREFIX.len() + 48);
        assert!(sign_plan(
            KeyAlgorithm::Rsa { bits: 2048 },
            SignatureAlgorithm::RsaPkcs1Sha256,
            b"m",
            &[]
        )
        .is_err());
    }
}
