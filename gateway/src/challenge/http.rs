//! What the HTTP-speaking validators (webhook, Intune) share: secrets from the
//! environment or a file, the outbound client (reqwest on rustls/aws-lc-rs; honours
//! `HTTPS_PROXY`/`NO_PROXY`), request ids, HMAC signatures, timestamps.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use crate::config::ConfigError;

/// A secret from exactly one of an environment variable or a file (trailing newline
/// ignored). Secrets are never written inline in the config.
pub fn read_secret(
    setting: &'static str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Zeroizing<String>, ConfigError> {
    let secret = match (env, file) {
        (Some(var), None) => {
            Zeroizing::new(std::env::var(var).map_err(|_| ConfigError::Invalid {
                setting,
                reason: format!("the environment variable {var} is not set"),
            })?)
        }
        (None, Some(path)) => {
            crate::secrets::check_permissions(setting, path);
            let text =
                Zeroizing::new(
                    std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                        setting,
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?,
                );
            Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        _ => {
            return Err(ConfigError::Invalid {
                setting,
                reason: "needs exactly one of an _env or a _file setting".into(),
            })
        }
    };
    if secret.is_empty() {
        return Err(ConfigError::Invalid {
            setting,
            reason: "the secret is empty".into(),
        });
    }
    Ok(secret)
}

/// Like [`read_secret`], but neither source set is `None`.
pub fn optional_secret(
    setting: &'static str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Zeroizing<String>>, ConfigError> {
    if env.is_none() && file.is_none() {
        return Ok(None);
    }
    read_secret(setting, env, file).map(Some)
}

/// Resolves a relative path against the config file's folder.
pub fn resolve(path: &mut Option<PathBuf>, base: &Path) {
    if let Some(p) = path {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

/// The outbound client: a total timeout per request, redirects off (a validator that
/// redirects is misconfigured, and a redirect must not carry our credentials
/// elsewhere), and `ca_file`'s certificates trusted besides the system roots (a test
/// server, a private webhook).
pub fn client(
    setting: &'static str,
    timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, ConfigError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("scep-gateway/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| ConfigError::File {
            setting,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ConfigError::File {
            setting,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(|e| ConfigError::Invalid {
        setting,
        reason: format!("cannot build the HTTP client: {e}"),
    })
}

/// A random (version 4) UUID, for `client-request-id` and JWT ids.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    // aws-lc's DRBG does not fail on a running system; zeros would still be unique
    // enough for a request id, which is not a secret.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// HMAC-SHA256 of `body` under `key`, lowercase hex.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref())
}

/// `YYYY-MM-DDThh:mm:ss` + `fraction` + `Z` in UTC (RFC 3339).
pub fn utc_timestamp(time: SystemTime, fraction: &str) -> String {
    match der::DateTime::from_system_time(time) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minutes(),
            t.seconds()
        ),
        Err(_) => "9999-12-31T23:59:59Z".into(),
    }
}

/// Reads a response body, refusing more than `max` bytes (a misbehaving server cannot
/// make us buffer without bound).
pub async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error of reqwest as text, without the URL's query (which may hold a token).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_v4_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_528_733_480);
        assert_eq!(utc_timestamp(t, ".0000000"), "2018-06-11T16:11:20.0000000Z");
        assert_eq!(utc_timestamp(t, ""), "2018-06-11T16:11:20Z");
        assert_eq!(truncate("héllo", 2), "h");
    }
}
