//! The one-time password admin endpoint (NDES `mscep_admin`, see
//! [`crate::challenge::one_time`]).
//!
//! - `POST /admin/challenges`, body optional JSON `{"requester": "…", "cn_pattern": "…"}`
//!   → 201 `{"password", "requester", "expires_at" (unix s), "expires" (RFC 3339)}`;
//! - `GET /certsrv/mscep_admin/` → a small HTML page with the password, for scripts and
//!   people used to NDES.
//!
//! Authenticated by a TLS client certificate that `[server.tls] client_ca` verified and
//! a `[[challenge.admin_clients]]` names (mutual TLS), or by `Authorization: Bearer
//! <token>` of a configured `[[challenge.admin_tokens]]`. Never open by default: without
//! the one-time mode or without clients and tokens both paths answer 404;
//! a missing or wrong token 401; a full cache 429 ("password cache full"); a store
//! outage 503.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::challenge::http::utc_timestamp;
use crate::challenge::one_time::Issue;
use crate::error::Answer;
use crate::service::Gateway;

pub const CHALLENGES: &str = "/admin/challenges";
pub const MSCEP_ADMIN: &[&str] = &["/certsrv/mscep_admin/", "/certsrv/mscep_admin"];

/// Largest request body: a requester and a pattern.
const MAX_BODY: usize = 4096;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChallenge {
    requester: Option<String>,
    cn_pattern: Option<String>,
}

/// Serves one admin request; `path` is one of [`CHALLENGES`] or [`MSCEP_ADMIN`].
pub async fn handle(gateway: &Gateway, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(one_time) = gateway.challenge.one_time().filter(|o| o.admin_enabled()) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let html = request.uri().path() != CHALLENGES;
    match (request.method(), html) {
        (&Method::POST, false) | (&Method::GET, true) => {}
        _ => return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
    // Mutual TLS first: a certificate `[server.tls] client_ca` verified and
    // `[[challenge.admin_clients]]` names; otherwise a bearer token.
    let by_certificate = request
        .extensions()
        .get::<std::sync::Arc<super::ClientCertificate>>()
        .and_then(|client| one_time.authenticate_client(client));
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token_name) =
        by_certificate.or_else(|| presented.and_then(|t| one_time.authenticate(t)))
    else {
        tracing::warn!(path = %request.uri().path(), "admin request refused: no known client certificate and a missing or wrong bearer token");
        let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    let token_name = token_name.to_owned();
    let asked = if html {
        NewChallenge::default()
    } else {
        match read_json(request).await {
            Ok(asked) => asked,
            Err(response) => return response,
        }
    };
    // The bound counts per requester: the token's name, or "<token>/<requester>" for a
    // portal that hands passwords to many people with one token.
    let requester = match asked.requester.as_deref() {
        Some(r) if !r.is_empty() => format!("{token_name}/{r}"),
        _ => token_name,
    };
    match one_time
        .issue(&requester, asked.cn_pattern.as_deref())
        .await
    {
        Ok(Issue::Issued(new)) => {
            let expires = utc_timestamp(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(new.expires_at),
                "",
            );
            if html {
                let page = format!(
                    "<html><body><p>The enrollment challenge password is: <b>{}</b></p>\
                     <p>This password can be used only once and expires at {expires}.</p></body></html>\n",
                    new.password.as_str()
                );
                return with_type(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    page.into_bytes(),
                );
            }
            let body = json!({
                "password": new.password.as_str(),
                "requester": new.requester,
                "expires_at": new.expires_at,
                "expires": expires,
            });
            with_type(
                StatusCode::CREATED,
                "application/json",
                body.to_string().into_bytes(),
            )
        }
        Ok(Issue::CacheFull) => json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "password cache full: this requester has the most unused passwords allowed",
        ),
        Err(e) => match e.answer() {
            Answer::Http(status) => json_error(status, &e.to_string()),
            Answer::Failure(_) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
    }
}

async fn read_json(request: Request<Incoming>) -> Result<NewChallenge, Response<Full<Bytes>>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(NewChallenge::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")))
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "application/json",
        json!({ "error": message }).to_string().into_bytes(),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A password must not sit in a proxy's or browser's cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
