//! GetCACaps (RFC 8894 §3.5): the keywords that tell a client what it may use.

/// What this server offers, decided once from the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    /// `[crypto] legacy_des`: DES3 is advertised (single DES never is: RFC 8894 §3.5.2
    /// says MUST NOT, even though we accept it from clients that send it unasked).
    pub legacy_des: bool,
    /// `[crypto] legacy_sha1`: SHA-1 is advertised.
    pub legacy_sha1: bool,
    /// A next RA/CA set is configured: GetNextCACert is advertised.
    pub next_ca: bool,
}

impl Capabilities {
    /// The GetCACaps body: one keyword per line (RFC 8894 §3.5.2). `SCEPStandard` stands
    /// for AES + POSTPKIOperation + SHA-256; the three are also listed one by one for the
    /// clients that predate it. macOS and sscep switch to POST on seeing POSTPKIOperation.
    pub fn render(&self) -> String {
        let mut caps = vec!["AES", "POSTPKIOperation", "Renewal", "SHA-256", "SHA-512"];
        if self.legacy_des {
            caps.push("DES3");
        }
        if self.legacy_sha1 {
            caps.push("SHA-1");
        }
        if self.next_ca {
            caps.push("GetNextCACert");
        }
        caps.push("SCEPStandard");
        let mut body = caps.join("\n");
        body.push('\n');
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_advertise_only_modern_algorithms() {
        let body = Capabilities::default().render();
        let lines: Vec<&str> = body.lines().collect();
        for needed in [
            "AES",
            "SHA-256",
            "SHA-512",
            "POSTPKIOperation",
            "Renewal",
            "SCEPStandard",
        ] {
            assert!(lines.contains(&needed), "{needed} missing");
        }
        for absent in ["DES3", "DES", "SHA-1", "GetNextCACert"] {
            assert!(!lines.contains(&absent), "{absent} advertised");
        }
    }

    #[test]
    fn switches_add_their_keywords() {
        let caps = Capabilities {
            legacy_des: true,
            legacy_sha1: true,
            next_ca: true,
        };
        let body = caps.render();
        for kw in ["DES3", "SHA-1", "GetNextCACert"] {
            assert!(body.lines().any(|l| l == kw), "{kw}");
        }
    }
}
