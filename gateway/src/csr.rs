//! TODO: PKCS#10 certification requests (RFC 2986).
#[derive(Debug)]
pub struct CertificationRequest;
