//! One SCEP server under load: its URL, what GetCACaps and GetCACert said, and the
//! PKIOperation exchange itself.

use std::time::Duration;

use scep_gateway::scep::client;

use crate::Result;

/// How PKIOperation travels (RFC 8894 §4.1): POST body, or base64 in the query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    Post,
    Get,
}

/// A SCEP endpoint, e.g. `http://127.0.0.1:8080/scep`.
pub struct Target {
    pub url: String,
    http: reqwest::Client,
    pub capabilities: String,
    /// GetCACert's certificates, and the one requests are enveloped to.
    pub ca_certificates: Vec<Vec<u8>>,
    pub recipient: Vec<u8>,
}

/// Why an exchange failed before there was a reply to check.
pub fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "reading the body".into()
    } else {
        // The kind, not the message: messages carry addresses and would split the count.
        "transport".into()
    }
}

impl Target {
    /// GetCACaps and GetCACert, and picks the RA encryption certificate.
    pub async fn connect(url: &str, timeout: Duration, pool: usize) -> Result<Target> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // Closed loop at concurrency C keeps C connections alive; open loop more.
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .build()?;
        let url = url.trim_end_matches('?').to_owned();
        let caps = get(&http, &format!("{url}?operation=GetCACaps")).await?;
        let capabilities = String::from_utf8_lossy(&caps).into_owned();
        let body = get(&http, &format!("{url}?operation=GetCACert&message=load")).await?;
        let ca_certificates = client::ca_certificates(&body)
            .map_err(|e| format!("{url}: GetCACert answer unreadable: {e}"))?;
        let recipient = client::encryption_certificate(&ca_certificates)
            .ok_or_else(|| format!("{url}: GetCACert returned no certificate"))?
            .to_vec();
        Ok(Target {
            url,
            http,
            capabilities,
            ca_certificates,
            recipient,
        })
    }

    /// Whether GetCACaps lists `capability` (case-insensitive, one per line).
    pub fn has_capability(&self, capability: &str) -> bool {
        self.capabilities
            .lines()
            .any(|l| l.trim().eq_ignore_ascii_case(capability))
    }

    /// Sends one pkiMessage; the reply body of an HTTP 200, or the error kind.
    pub async fn pki_operation(
        &self,
        method: Method,
        message: &[u8],
    ) -> std::result::Result<Vec<u8>, String> {
        let request = match method {
            Method::Post => self
                .http
                .post(format!("{}?operation=PKIOperation", self.url))
                .header("content-type", "application/x-pki-message")
                .body(message.to_vec()),
            Method::Get => self.http.get(format!(
                "{}?operation=PKIOperation&message={}",
                self.url,
                crate::get_query_message(message)
            )),
        };
        let response = request.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        if !status.is_success() {
            return Err(format!("http {}", status.as_u16()));
        }
        Ok(body.to_vec())
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Vec<u8>> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}").into());
    }
    Ok(response.bytes().await?.to_vec())
}
