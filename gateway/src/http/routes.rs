//! Dispatch of one HTTP request to a SCEP operation (RFC 8894 §4).
//!
//! SCEP is served on `/scep`, on NDES's `/certsrv/mscep/mscep.dll` (so device profiles
//! written for NDES keep working) and on sscep's default `/cgi-bin/pkiclient.exe`. Nothing
//! routes by Host: routers send HTTP/1.0 without one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::admission::Refusal;
use super::query::{decode_message, ScepQuery};
use crate::enroll::{self, Summary};
use crate::error::{Answer, Error};
use crate::metrics;
use crate::reload::Live;
use crate::service::Gateway;

/// `application/x-pki-message`: the content type of a PKIOperation reply (§4.3).
pub const PKI_MESSAGE: &str = "application/x-pki-message";

const SCEP_PATHS: &[&str] = &[
    "/scep",
    "/scep/",
    "/certsrv/mscep/mscep.dll",
    "/certsrv/mscep/mscep.dll/pkiclient.exe",
    "/cgi-bin/pkiclient.exe",
];

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// SCEP and the probes; `/metrics` too unless an admin listener serves it.
    Public { metrics: bool },
    /// `[server] admin_listen`: `/metrics`, `/healthz` and `/readyz` only.
    Admin,
}

/// The bounds a route enforces on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// The whole request, body included, must be answered within this time.
    pub request_timeout: Duration,
}

/// Serves one request. Never fails: every error becomes a response.
pub async fn handle(
    live: Arc<Live>,
    limits: Limits,
    role: Role,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == RELOAD {
        return Ok(reload(live, request).await);
    }
    if request.uri().path() == REVOKE {
        return Ok(revoke(live, request).await);
    }
    // The gateway current when the request arrives (see `reload`): it stays this
    // request's even if a reload replaces it meanwhile.
    let gateway = live.get();
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let operation = ScepQuery::parse(request.uri().query().unwrap_or("")).operation;
    let scep = role != Role::Admin && SCEP_PATHS.contains(&path.as_str());
    let deadline = tokio::time::Instant::now() + limits.request_timeout;
    let work = route(gateway, limits, role, deadline, request);
    let (response, summary) = match tokio::time::timeout_at(deadline, work).await {
        Ok(done) => done,
        Err(_) => (
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request took too long\n",
            ),
            None,
        ),
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if scep {
        metrics::request(operation.as_deref(), summary.as_ref(), status, elapsed);
    }
    match summary {
        Some(s) => tracing::info!(
            %method, %path, operation = operation.as_deref().unwrap_or("PKIOperation"),
            message_type = s.message_type.map(|m| m.name()).unwrap_or(""),
            transaction_id = s.transaction_id.as_deref().unwrap_or(""),
            outcome = s.outcome, detail = s.detail.as_deref().unwrap_or(""),
            ca = s.ca.as_deref().unwrap_or(""),
            status, latency_ms, "scep request"
        ),
        None => {
            tracing::debug!(%method, %path, operation = operation.as_deref().unwrap_or(""), status, latency_ms, "http request")
        }
    }
    Ok(response)
}

/// `deadline` ends the whole request; a body still arriving then is answered 408.
async fn route(
    gateway: Arc<Gateway>,
    limits: Limits,
    role: Role,
    deadline: tokio::time::Instant,
    request: Request<Incoming>,
) -> (Response<Full<Bytes>>, Option<Summary>) {
    let path = request.uri().path();
    match path {
        "/healthz" => return (plain(StatusCode::OK, "ok\n"), None),
        "/readyz" => return (readyz(&gateway).await, None),
        "/metrics" if matches!(role, Role::Admin | Role::Public { metrics: true }) => {
            return (prometheus(), None)
        }
        _ if role == Role::Admin => return (plain(StatusCode::NOT_FOUND, "not found\n"), None),
        super::admin::CHALLENGES => return (super::admin::handle(&gateway, request).await, None),
        _ if super::admin::MSCEP_ADMIN.contains(&path) => {
            return (super::admin::handle(&gateway, request).await, None)
        }
        _ if !SCEP_PATHS.contains(&path) => {
            return (plain(StatusCode::NOT_FOUND, "not found\n"), None)
        }
        _ => {}
    }
    let query = ScepQuery::parse(request.uri().query().unwrap_or(""));
    let method = request.method().clone();
    let peer = request.extensions().get::<super::PeerAddr>().map(|p| p.0);
    // A POST without an operation can only be a PKIOperation.
    let operation = match (&query.operation, &method) {
        (Some(op), _) => op.clone(),
        (None, &Method::POST) => "PKIOperation".to_owned(),
        (None, _) => {
            return (
                plain(StatusCode::BAD_REQUEST, "missing operation parameter\n"),
                None,
            )
        }
    };
    match (method, operation.as_str()) {
        (Method::GET | Method::HEAD, "GetCACaps") => (
            with_type(
                StatusCode::OK,
                "text/plain",
                Bytes::from(gateway.capabilities.clone()),
            ),
            None,
        ),
        (Method::GET | Method::HEAD, "GetCACert") => {
            // `message` is the CA identifier: it names a CA profile (ca::router); with
            // the embedded CA alone every name gets the same answer.
            let answer = gateway.ca_cert_for(query.message_text().as_deref());
            (
                with_type(StatusCode::OK, answer.content_type, answer.body.clone()),
                None,
            )
        }
        (Method::GET | Method::HEAD, "GetNextCACert") => match &gateway.next_ca_cert {
            Some(answer) => (
                with_type(StatusCode::OK, answer.content_type, answer.body.clone()),
                None,
            ),
            None => (
                error_response(&Error::NotAvailable("no next CA is configured")),
                None,
            ),
        },
        (Method::GET, "PKIOperation") => {
            let Some(raw) = query.message.as_deref() else {
                return (
                    plain(StatusCode::BAD_REQUEST, "missing message parameter\n"),
                    None,
                );
            };
            match decode_message(raw) {
                Ok(bytes) => pki_operation(gateway, Bytes::from(bytes), peer).await,
                Err(e) => (error_response(&e), None),
            }
        }
        (Method::POST, "PKIOperation") => {
            // The same deadline as the whole request (checked first, as the inner
            // future): a client that stops sending is told 408, not our 503.
            let body = tokio::time::timeout_at(deadline, read_body(request, limits.max_body_bytes));
            match body.await.unwrap_or(Err(Error::BodyTimeout)) {
                Ok(body) => pki_operation(gateway, body, peer).await,
                Err(e) => (error_response(&e), None),
            }
        }
        (_, "GetCACaps" | "GetCACert" | "GetNextCACert" | "PKIOperation") => (
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            None,
        ),
        (_, other) => (
            error_response(&Error::UnknownOperation(truncate(other))),
            None,
        ),
    }
}

/// 200 `{"ready":true}` or 503 `{"ready":false,"store":"<reason>"}`, and
/// `{"ready":false,"shutdown":"draining"}` after SIGTERM (see [`crate::health`]).
async fn readyz(gateway: &Gateway) -> Response<Full<Bytes>> {
    let report = gateway.readiness.report(gateway).await;
    let status = if report.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_type(status, "application/json", Bytes::from(report.to_json()))
}

/// The Prometheus text exposition (version 0.0.4).
fn prometheus() -> Response<Full<Bytes>> {
    with_type(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(metrics::render()),
    )
}

async fn pki_operation(
    gateway: Arc<Gateway>,
    message: Bytes,
    peer: Option<std::net::SocketAddr>,
) -> (Response<Full<Bytes>>, Option<Summary>) {
    let _permit = match gateway.admission.admit(peer.map(|p| p.ip())) {
        Ok(permit) => permit,
        Err(refusal) => {
            metrics::admission_refused(refusal);
            let (status, text) = match refusal {
                Refusal::Busy => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy: too many operations in flight\n",
                ),
                Refusal::Rate => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests from this address\n",
                ),
            };
            let mut response = plain(status, text);
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return (response, None);
        }
    };
    let (result, summary) = enroll::pki_operation_from(gateway, message, peer).await;
    let response = match result {
        Ok(reply) => with_type(StatusCode::OK, PKI_MESSAGE, Bytes::from(reply)),
        Err(e) => error_response(&e),
    };
    (response, Some(summary))
}

/// `POST /admin/reload`: the SIGHUP reload for tools that cannot signal the process.
const RELOAD: &str = "/admin/reload";

async fn reload(live: Arc<Live>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = crate::reload::handle(live, authorization).await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if body.starts_with('{') {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    with_type(status, content_type, Bytes::from(body))
}

/// `POST /admin/revoke`, body `{"serial": "<hex>"}`: revokes a certificate of the
/// embedded CA and records it for every replica's CRL (see `revocation`). Authorized by
/// the `/admin/reload` bearer token: 404 unless one is configured, 401 without it. 200
/// `{"revoked":true,"serial":"…","already":bool}`; 400 for a bad body or serial; 404
/// without an embedded CA; 503 when the store cannot record it (the call may be
/// repeated).
const REVOKE: &str = "/admin/revoke";

/// Largest `/admin/revoke` body: one serial.
const MAX_REVOKE_BODY: usize = 1024;

async fn revoke(live: Arc<Live>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Asked {
        serial: String,
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let gateway = live.get();
    if gateway.reload_token.is_none() {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !crate::reload::authorized(&gateway, authorization) {
        tracing::warn!("revocation refused: missing or wrong bearer token");
        return plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
    }
    let body = match read_body(request, MAX_REVOKE_BODY).await {
        Ok(body) => body,
        Err(e) => return error_response(&e),
    };
    let Ok(asked) = serde_json::from_slice::<Asked>(&body) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "the body must be {\"serial\": \"<hex>\"}\n",
        );
    };
    let serial = match crate::revocation::parse_serial(&asked.serial) {
        Ok(serial) => serial,
        Err(e) => return error_response(&e),
    };
    let shown = hex::encode(&serial);
    match crate::revocation::revoke(&gateway, &serial).await {
        Ok(new) => {
            tracing::info!(serial = %shown, already = !new, "certificate revoked (admin call)");
            let body = serde_json::json!({ "revoked": true, "serial": shown, "already": !new });
            with_type(
                StatusCode::OK,
                "application/json",
                Bytes::from(format!("{body}\n")),
            )
        }
        Err(Error::NotFound(why)) => plain(StatusCode::NOT_FOUND, &format!("{why}\n")),
        Err(e) => {
            tracing::warn!(serial = %shown, error = %e, "revocation failed");
            error_response(&e)
        }
    }
}

/// Reads a POST body up to `max` bytes: a declared length beyond it is refused before
/// reading, an undeclared one when it crosses the limit.
async fn read_body(request: Request<Incoming>, max: usize) -> Result<Bytes, Error> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(Error::TooLarge);
    }
    match Limited::new(request.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge),
        Err(e) => Err(Error::Malformed(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

fn error_response(error: &Error) -> Response<Full<Bytes>> {
    let status = match error.answer() {
        Answer::Http(status) => status,
        // Only reached when no CertRep could be built: a client error.
        Answer::Failure(_) => StatusCode::BAD_REQUEST,
    };
    plain(status, &format!("{error}\n"))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(text.to_owned()),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
