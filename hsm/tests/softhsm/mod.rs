//! A SoftHSM2 token store for one test process.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, at C_Initialize, and the module is initialised
//! once per process; so every test binary makes one temporary token folder with every
//! token its tests need, before the first test loads the module. A missing SoftHSM2 is a
//! test failure, never a skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use scep_hsm::pkcs11::admin::{keygen, KeySpec, TokenAccess};
use scep_hsm::pkcs11::module::TokenSelector;
use scep_hsm::pkcs11::{Pin, Pkcs11Key, Pkcs11KeyConfig, Purpose};

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "4321";
pub const SO_PIN: &str = "12345678";
pub const PIN_ENV: &str = "SCEP_HSM_TEST_PIN";
/// The token most tests share (distinct key labels keep them apart).
pub const TOKEN: &str = "scep-test";

pub struct SoftHsm {
    pub dir: tempfile::TempDir,
}

static FIXTURE: OnceLock<SoftHsm> = OnceLock::new();

pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed: run scripts/test-all (apt-get install softhsm2 opensc)");
}

/// The process's SoftHSM2, with `tokens` (plus [`TOKEN`]) initialised with [`PIN`] and
/// `mechanisms` as `slots.mechanisms` (e.g. `-CKM_RSA_PKCS`).
pub fn softhsm(tokens: &[&str], mechanisms: Option<&str>) -> &'static SoftHsm {
    FIXTURE.get_or_init(|| {
        require_tool("softhsm2-util");
        assert!(
            Path::new(MODULE).is_file(),
            "{MODULE} is missing: apt-get install softhsm2"
        );
        let dir = tempfile::tempdir().unwrap();
        let tokens_dir = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens_dir).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        let mut text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens_dir.display()
        );
        if let Some(m) = mechanisms {
            text.push_str(&format!("slots.mechanisms = {m}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        // Before any thread loads the module: it reads these at C_Initialize.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        std::env::set_var(PIN_ENV, PIN);
        for label in std::iter::once(TOKEN).chain(tokens.iter().copied()) {
            let out = Command::new(require_tool("softhsm2-util"))
                .args(["--init-token", "--free", "--label", label])
                .args(["--so-pin", SO_PIN, "--pin", PIN])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        SoftHsm { dir }
    })
}

pub fn access(token: &str) -> TokenAccess {
    TokenAccess {
        module: MODULE.into(),
        token: TokenSelector::Label(token.into()),
        pin: Pin::new(PIN.into()),
    }
}

/// A label and id no other test of this process uses.
pub fn unique(prefix: &str) -> (String, Vec<u8>) {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (format!("{prefix}-{n}"), n.to_be_bytes().to_vec())
}

pub fn config(token: &str, label: &str) -> Pkcs11KeyConfig {
    Pkcs11KeyConfig::new(MODULE.into(), token, label, PIN_ENV)
}

/// Held by a test while it creates objects on the token or looks objects up (opening a
/// key, listing): SoftHSM2's file object store is not safe when one thread of a process
/// creates an object while another creates or reads objects (softhsm/SoftHSMv2#573:
/// CKR_GENERAL_ERROR from C_GenerateKeyPair, half-written objects read back). The
/// gateway never creates objects while it runs; the tests of one process do, in
/// parallel. Operations on a key already open need no lock.
pub fn object_store() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Generates a key with the project's keygen and opens it.
pub fn new_key(spec: KeySpec, purpose: Purpose) -> Pkcs11Key {
    let _objects = object_store();
    let (label, id) = unique("k");
    keygen(&access(TOKEN), &label, &id, spec).unwrap();
    Pkcs11Key::open(&config(TOKEN, &label), purpose).unwrap()
}
