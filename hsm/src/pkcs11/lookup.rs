//! Finding a private key on a token and reading what the gateway needs to know about
//! it: its type and size, its permissions, and its public half as a DER
//! SubjectPublicKeyInfo (to match it against its certificate).
//!
//! The public half comes from the private-key object where the token exposes it
//! (CKA_MODULUS and CKA_PUBLIC_EXPONENT are not sensitive, PKCS#11 3.0 §4.9.1), else from
//! the public-key object with the same CKA_ID (CKA_EC_POINT, §2.3.3), else from
//! CKA_PUBLIC_KEY_INFO (§4.8, PKCS#11 3.0 tokens).

use cryptoki::error::Error as CkError;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use der::asn1::{Any, BitString, Null, OctetStringRef, UintRef};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

use crate::KeyAlgorithm;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// DER of the namedCurve OIDs, as CKA_EC_PARAMS holds them (RFC 5480 §2.1.1.1).
pub(crate) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub(crate) const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Why a key was not found.
#[derive(Debug)]
pub(crate) enum FindError {
    NotFound,
    Ambiguous(usize),
    Token(CkError),
    /// The object exists but cannot serve as an RA/CA key.
    Unusable(String),
}

impl From<CkError> for FindError {
    fn from(e: CkError) -> Self {
        FindError::Token(e)
    }
}

/// The private-key object matching `label` and/or `id` (exactly one must match).
pub(crate) fn find_private_key(
    session: &Session,
    label: Option<&str>,
    id: Option<&[u8]>,
) -> Result<ObjectHandle, FindError> {
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(label) = label {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = id {
        template.push(Attribute::Id(id.to_vec()));
    }
    let found = session.find_objects(&template)?;
    match found.len() {
        0 => Err(FindError::NotFound),
        1 => Ok(found[0]),
        n => Err(FindError::Ambiguous(n)),
    }
}

/// What the gateway knows about a key once found.
#[derive(Debug, Clone)]
pub(crate) struct KeyFacts {
    pub algorithm: KeyAlgorithm,
    pub spki: Vec<u8>,
    pub can_sign: bool,
    pub can_decrypt: bool,
}

pub(crate) fn key_facts(session: &Session, key: ObjectHandle) -> Result<KeyFacts, FindError> {
    let attrs = session.get_attributes(
        key,
        &[
            AttributeType::KeyType,
            AttributeType::Sign,
            AttributeType::Decrypt,
            AttributeType::Id,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
            AttributeType::EcParams,
        ],
    )?;
    let mut key_type = None;
    let (mut sign, mut decrypt) = (false, false);
    let (mut id, mut modulus, mut exponent, mut params) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Sign(b) => sign = b,
            Attribute::Decrypt(b) => decrypt = b,
            Attribute::Id(v) => id = Some(v),
            Attribute::Modulus(v) => modulus = Some(v),
            Attribute::PublicExponent(v) => exponent = Some(v),
            Attribute::EcParams(v) => params = Some(v),
            _ => {}
        }
    }
    let (algorithm, spki) = match key_type {
        Some(KeyType::RSA) => {
            let (n, e) = match (modulus, exponent) {
                (Some(n), Some(e)) => (n, e),
                _ => {
                    let public = public_key(session, id.as_deref())?;
                    let attrs = session.get_attributes(
                        public,
                        &[AttributeType::Modulus, AttributeType::PublicExponent],
                    )?;
                    let mut n = None;
                    let mut e = None;
                    for a in attrs {
                        match a {
                            Attribute::Modulus(v) => n = Some(v),
                            Attribute::PublicExponent(v) => e = Some(v),
                            _ => {}
                        }
                    }
                    match (n, e) {
                        (Some(n), Some(e)) => (n, e),
                        _ => return Err(FindError::Unusable("no readable RSA modulus".into())),
                    }
                }
            };
            let bits = rsa_bits(&n);
            (KeyAlgorithm::Rsa { bits }, rsa_spki(&n, &e)?)
        }
        Some(KeyType::EC) => {
            let params = params.ok_or_else(|| FindError::Unusable("no CKA_EC_PARAMS".into()))?;
            let (algorithm, coord) = if params == P256_PARAMS {
                (KeyAlgorithm::EcP256, 32)
            } else if params == P384_PARAMS {
                (KeyAlgorithm::EcP384, 48)
            } else {
                return Err(FindError::Unusable(
                    "an EC key on a curve other than P-256 or P-384".into(),
                ));
            };
            let spki = match public_key(session, id.as_deref()) {
                Ok(public) => {
                    let point = session
                        .get_attributes(public, &[AttributeType::EcPoint])?
                        .into_iter()
                        .find_map(|a| match a {
                            Attribute::EcPoint(p) => Some(p),
                            _ => None,
                        })
                        .ok_or_else(|| FindError::Unusable("no CKA_EC_POINT".into()))?;
                    ec_spki(&params, &unwrap_point(&point, coord)?)?
                }
                Err(FindError::NotFound) => public_key_info(session, key)?,
                Err(e) => return Err(e),
            };
            (algorithm, spki)
        }
        _ => return Err(FindError::Unusable("not an RSA or EC private key".into())),
    };
    Ok(KeyFacts {
        algorithm,
        spki,
        can_sign: sign,
        can_decrypt: decrypt,
    })
}

/// The public-key object with the private key's CKA_ID.
fn public_key(session: &Session, id: Option<&[u8]>) -> Result<ObjectHandle, FindError> {
    let Some(id) = id.filter(|id| !id.is_empty()) else {
        return Err(FindError::NotFound);
    };
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Id(id.to_vec()),
    ])?;
    found.first().copied().ok_or(FindError::NotFound)
}

fn public_key_info(session: &Session, key: ObjectHandle) -> Result<Vec<u8>, FindError> {
    session
        .get_attributes(key, &[AttributeType::PublicKeyInfo])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::PublicKeyInfo(v) if !v.is_empty() => Some(v),
            _ => None,
        })
        .ok_or_else(|| {
            FindError::Unusable(
                "no public key: no public-key object with the same CKA_ID and no \
                 CKA_PUBLIC_KEY_INFO"
                    .into(),
            )
        })
}

/// CKA_EC_POINT is a DER OCTET STRING holding the point (§2.3.3); some modules return
/// the bare point. An uncompressed point is 1 + 2 × coordinate bytes.
fn unwrap_point(value: &[u8], coord: usize) -> Result<Vec<u8>, FindError> {
    if value.len() == 1 + 2 * coord && value[0] == 0x04 {
        return Ok(value.to_vec());
    }
    <&OctetStringRef>::from_der(value)
        .map(|o| o.as_bytes().to_vec())
        .map_err(|_| FindError::Unusable("CKA_EC_POINT is not an EC point".into()))
}

fn rsa_bits(modulus: &[u8]) -> usize {
    let trimmed: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(i) => &modulus[i..],
        None => &[],
    };
    match trimmed.first() {
        Some(top) => trimmed.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

fn bad_encoding(_: der::Error) -> FindError {
    FindError::Unusable("the public key could not be encoded".into())
}

/// RFC 3279 §2.3.1: rsaEncryption, parameters NULL, RSAPublicKey in the BIT STRING.
pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Result<Vec<u8>, FindError> {
    let key = RsaPublicKey {
        modulus: UintRef::new(n).map_err(bad_encoding)?,
        public_exponent: UintRef::new(e).map_err(bad_encoding)?,
    }
    .to_der()
    .map_err(bad_encoding)?;
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: RSA_ENCRYPTION,
            parameters: Some(Any::from(Null)),
        },
        subject_public_key: BitString::from_bytes(&key).map_err(bad_encoding)?,
    }
    .to_der()
    .map_err(bad_encoding)
}

/// RFC 5480 §2: id-ecPublicKey with the namedCurve, the point in the BIT STRING.
pub(crate) fn ec_spki(params: &[u8], point: &[u8]) -> Result<Vec<u8>, FindError> {
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: EC_PUBLIC_KEY,
            parameters: Some(Any::from_der(params).map_err(bad_encoding)?),
        },
        subject_public_key: BitString::from_bytes(point).map_err(bad_encoding)?,
    }
    .to_der()
    .map_err(bad_encoding)
}
