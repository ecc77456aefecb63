//! The parts of the Cryptographic Message Syntax (RFC 5652) that SCEP uses, written for
//! what real clients send rather than for what a DER purist would accept.
//!
//! The RustCrypto `cms` crate gives us the ASN.1 types but neither verifies nor decrypts,
//! and its DER-only decoder refuses the BER that old clients send (indefinite lengths,
//! constructed OCTET STRINGs, 32-byte certificate serials). So reading goes through a
//! small lenient reader ([`ber`]) that keeps the original bytes of everything that is
//! signed; writing produces plain DER.
//!
//! - [`algorithms`]: digest, signature and content-encryption algorithm identifiers.
//! - [`ber`]: a lenient TLV reader.
//! - [`signed`]: SignedData (RFC 5652 §5): parse, verify, build, and the degenerate
//!   certs-only form.
//! - [`envelope`]: EnvelopedData (RFC 5652 §6): open with an RA key, seal to a recipient.
//! - [`public_keys`]: a requester's key parsed once per enrollment, not once per use.

pub mod algorithms;
pub mod ber;
pub mod envelope;
pub mod public_keys;
pub mod signed;
