//! What every target shares: the test keys, loaded once per process.
//!
//! The target bodies themselves live in `scep_gateway::fuzzing`, where the stable
//! corpus replay (`gateway/tests/fuzz_corpus.rs`) calls them too.

use std::sync::OnceLock;

use scep_gateway::fuzzing::{FixtureFiles, Fixtures};

/// The RA key (`ra-ca.key.pem`), the captured clients' keys and the CSR signing key,
/// compiled in so that a fuzz binary runs from any folder.
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        Fixtures::new(&FixtureFiles {
            ra_certificate_pem: include_bytes!("../../gateway/tests/data/ra-ca.pem"),
            ra_key_pem: include_bytes!("../../gateway/tests/data/ra-ca.key.pem"),
            clients: &[
                (
                    include_bytes!("../../gateway/tests/data/certmonger-client.key.pem"),
                    include_bytes!("../../gateway/tests/data/certmonger-pkcsreq.der"),
                ),
                (
                    include_bytes!("../../gateway/tests/data/scepclient-client.key.pem"),
                    include_bytes!("../../gateway/tests/data/scepclient-pkcsreq.der"),
                ),
            ],
            csr_key_pem: include_bytes!("../../gateway/tests/data/fuzz-csr-p256.key.pem"),
        })
    })
}
