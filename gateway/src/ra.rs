//! The Registration Authority's credentials: which key signs CertReps, which key opens
//! request envelopes, and the certificates that name them.
//!
//! RFC 8894 §2.1 lets the RA use one certificate for both jobs or two (a signing RA and
//! an encryption RA). The keys sit behind [`scep_hsm::Key`], so whether they are files or
//! HSM objects is configuration.

use std::sync::Arc;

use scep_hsm::Key;

/// A private key together with the certificate that carries its public half.
#[derive(Debug, Clone)]
pub struct Credential {
    pub key: Arc<dyn Key>,
    /// The certificate's DER bytes exactly as loaded; served in GetCACert and placed in
    /// the CertRep's SignedData.
    pub certificate: Arc<[u8]>,
}

/// The RA's keys for the current certificate set.
#[derive(Debug, Clone)]
pub struct RaKeys {
    /// Signs every CertRep (needs digitalSignature).
    pub signer: Credential,
    /// Decrypts request envelopes (needs keyEncipherment). The same credential as
    /// `signer` unless a separate encryption RA is configured.
    pub decrypter: Credential,
    /// Earlier RA encryption credentials, kept for decryption only during a rollover:
    /// a device that fetched the previous RA certificate before the switch still
    /// encrypts to it, and its RecipientInfo says so (RFC 5652 §6.2.1).
    pub previous: Vec<Credential>,
}

impl RaKeys {
    /// Every credential that may open a request envelope: the current one first.
    pub fn decrypters(&self) -> Vec<&Credential> {
        std::iter::once(&self.decrypter)
            .chain(&self.previous)
            .collect()
    }

    /// The RA certificates in the order GetCACert serves them: signing first, then a
    /// distinct encryption certificate.
    pub fn certificates(&self) -> Vec<Arc<[u8]>> {
        let mut certs = vec![self.signer.certificate.clone()];
        if self.decrypter.certificate != self.signer.certificate {
            certs.push(self.decrypter.certificate.clone());
        }
        certs
    }
}
