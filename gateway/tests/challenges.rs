//! Challenge modes end to end (issue 6) against real `scep-gateway` processes: one-time
//! passwords (admin endpoint, CLI, single use across replicas on a real redis-server),
//! the webhook (a server inside the test allows, denies, stalls, talks garbage, and
//! receives notifications), and the Intune validation API (a local HTTPS server speaks
//! Entra ID's token endpoint, Graph discovery and the three ScepActions exactly as
//! `shared/docs/intune-scep-validation.md` describes them).

mod common;
#[path = "challenges/mock.rs"]
mod mock;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::redis::RedisServer;
use common::{get, metric, post, raw_request, Options, Pki};
use mock::{MockServer, Recorded, Reply};
use scep_gateway::ca::certificate::{common_name, ParsedCertificate};
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::scep::client::{self, MessageSpec, Requester};
use scep_gateway::scep::message::{FailInfo, MessageType, Nonce, PkiStatus};
use scep_hsm::{Key, SoftwareKey};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// A device with its own key, enrolling with a chosen CN and challenge.
struct Device {
    requester: Requester,
    cn: String,
}

/// What came back.
#[derive(Debug)]
enum Sent {
    Reply(client::Reply),
    Http(u16, String),
}

impl Sent {
    fn reply(self) -> client::Reply {
        match self {
            Sent::Reply(r) => r,
            Sent::Http(status, body) => panic!("HTTP {status}: {body}"),
        }
    }

    fn assert_success(self) -> Vec<u8> {
        let reply = self.reply();
        assert_eq!(
            reply.status,
            PkiStatus::Success,
            "{:?}",
            reply.fail_info_text
        );
        reply.certificates[0].clone()
    }

    /// FAILURE badRequest, no certificate; returns the failInfoText.
    fn assert_bad_request(self) -> String {
        let reply = self.reply();
        assert_eq!(reply.status, PkiStatus::Failure);
        assert_eq!(reply.fail_info, Some(FailInfo::BadRequest));
        assert!(reply.certificates.is_empty());
        reply.fail_info_text.unwrap_or_default()
    }
}

impl Device {
    fn new(cn: &str) -> Device {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(cn.into(), 2048).unwrap());
        let requester = Requester::self_signed(key, &common_name(cn).unwrap()).unwrap();
        Device {
            requester,
            cn: cn.into(),
        }
    }

    fn enroll(&self, addr: SocketAddr, challenge: &str) -> Sent {
        let answer = get(addr, "/scep?operation=GetCACert");
        assert_eq!(answer.status, 200);
        let certs = client::ca_certificates(&answer.body).unwrap();
        let ra = client::encryption_certificate(&certs).unwrap().to_vec();
        let csr = self
            .requester
            .certification_request(&common_name(&self.cn).unwrap(), Some(challenge))
            .unwrap();
        let spec = MessageSpec {
            message_type: MessageType::PkcsReq,
            transaction_id: self.requester.key_transaction_id(),
            sender_nonce: Nonce::random(),
            digest: Digest::Sha256,
            cipher: ContentCipher::Aes256Cbc,
        };
        let message = self.requester.pki_message(&spec, &ra, &csr).unwrap();
        let response = post(addr, "/scep?operation=PKIOperation", &message);
        if response.status != 200 {
            return Sent::Http(
                response.status,
                String::from_utf8_lossy(&response.body).into_owned(),
            );
        }
        Sent::Reply(
            self.requester
                .read_reply(&response.body, &spec, false)
                .unwrap(),
        )
    }
}

/// A PKI whose `[challenge]` table is `challenge` (the `[renewal]` table and those
/// after it are kept).
fn pki_with(challenge: &str, options: &Options) -> Pki {
    let pki = Pki::init(options);
    let text = std::fs::read_to_string(pki.config()).unwrap();
    let start = text.find("[challenge]").unwrap();
    let end = text.find("[renewal]").unwrap();
    let text = format!("{}{challenge}\n\n{}", &text[..start], &text[end..]);
    std::fs::write(pki.config(), text).unwrap();
    pki
}

fn secret_file(pki: &Pki, name: &str, secret: &str) -> String {
    let path = pki.dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path.display().to_string()
}

fn one_time_pki(extra: &str, options: &Options) -> Pki {
    let pki = pki_with("[challenge]\nmode = \"one-time\"\n", options);
    let token = secret_file(&pki, "admin.token", ADMIN_TOKEN);
    let text = std::fs::read_to_string(pki.config()).unwrap().replace(
        "mode = \"one-time\"\n",
        &format!(
            "mode = \"one-time\"\n{extra}\n[[challenge.admin_tokens]]\nname = \"mdm\"\ntoken_file = \"{token}\"\n"
        ),
    );
    std::fs::write(pki.config(), text).unwrap();
    pki
}

/// POST /admin/challenges with `token` (None: no Authorization) and `body`.
fn admin(addr: SocketAddr, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /admin/challenges HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = raw_request(addr, request.as_bytes());
    let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, value)
}

fn new_password(addr: SocketAddr, body: &str) -> String {
    let (status, value) = admin(addr, Some(ADMIN_TOKEN), body);
    assert_eq!(status, 201, "{value}");
    let password = value["password"].as_str().unwrap().to_owned();
    assert_eq!(password.len(), 32);
    password
}

// ---------------------------------------------------------------- one-time passwords

#[test]
fn one_time_password_enrolls_once_then_is_refused() {
    let pki = one_time_pki("", &Options::default());
    let mut gateway = pki.serve();
    let password = new_password(gateway.addr, "");
    Device::new("device-1")
        .enroll(gateway.addr, &password)
        .assert_success();
    let text = Device::new("device-2")
        .enroll(gateway.addr, &password)
        .assert_bad_request();
    assert!(text.contains("already used"), "{text}");
    // Wrong passwords are refused the same way.
    Device::new("device-3")
        .enroll(gateway.addr, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .assert_bad_request();
    gateway.assert_healthy();
    let log = gateway.log();
    assert!(!log.contains(&password), "the password was logged");
    assert!(!log.contains(ADMIN_TOKEN), "the admin token was logged");
}

#[test]
fn one_time_admin_endpoint_refuses_missing_and_wrong_tokens() {
    let pki = one_time_pki("", &Options::default());
    let gateway = pki.serve();
    assert_eq!(admin(gateway.addr, None, "").0, 401);
    assert_eq!(
        admin(gateway.addr, Some("admin-token-0123456789abcdeX"), "").0,
        401
    );
    assert_eq!(admin(gateway.addr, Some(""), "").0, 401);
    // GET on the POST endpoint.
    assert_eq!(get(gateway.addr, "/admin/challenges").status, 405);
    // The NDES-style page, with the token.
    let page = raw_request(
        gateway.addr,
        format!("GET /certsrv/mscep_admin/ HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(page.status, 200);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = String::from_utf8(page.body).unwrap();
    let password = html
        .split("<b>")
        .nth(1)
        .unwrap()
        .split("</b>")
        .next()
        .unwrap();
    Device::new("device-html")
        .enroll(gateway.addr, password)
        .assert_success();
    assert_eq!(get(gateway.addr, "/certsrv/mscep_admin/").status, 401);
}

/// curl to `https://127.0.0.1:<port><path>` trusting `dir`/ca.pem, with the client
/// certificate `client` (`<client>.pem` + `<client>.key` in `dir`) and `token` if given:
/// (curl's exit code, HTTP status, body).
fn curl_tls(
    dir: &std::path::Path,
    port: u16,
    method: &str,
    path: &str,
    client: Option<&str>,
    token: Option<&str>,
) -> (i32, u16, String) {
    let mut command = std::process::Command::new(common::require_tool("curl"));
    command.current_dir(dir).args([
        "-sS",
        "--cacert",
        "ca.pem",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(client) = client {
        command.args([
            "--cert",
            &format!("{client}.pem"),
            "--key",
            &format!("{client}.key"),
        ]);
    }
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if method == "POST" {
        command.args(["-d", ""]);
    }
    let out = command
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        status.trim().parse().unwrap_or(0),
        body.to_owned(),
    )
}

/// A client certificate for `cn`, issued by `dir`/ca.pem (or self-signed when
/// `foreign`), written as `<name>.pem` and `<name>.key` in `dir`.
fn client_certificate(dir: &std::path::Path, name: &str, cn: &str, foreign: bool) {
    let subject = format!("/CN={cn}");
    if !foreign {
        common::issue_leaf(dir, name, &subject, "extendedKeyUsage=clientAuth\n");
        return;
    }
    common::self_signed_in(dir, name, &subject, &["extendedKeyUsage=clientAuth"]);
}

#[test]
fn one_time_admin_clients_authenticate_by_mutual_tls() {
    let pki = one_time_pki(
        "[[challenge.admin_clients]]\nname = \"portal\"\ncommon_name = \"portal-admin\"\n",
        &Options::default(),
    );
    let tls = pki.dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let (ca, cert, key) = common::tls_files(&tls);
    client_certificate(&tls, "admin", "portal-admin", false);
    client_certificate(&tls, "stranger", "someone-else", false);
    client_certificate(&tls, "forged", "portal-admin", true);
    let config = std::fs::read_to_string(pki.config()).unwrap().replacen(
        "\n[ra]\n",
        &format!(
            "\n[server.tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\n[ra]\n",
            cert.display(),
            key.display(),
            ca.display()
        ),
        1,
    );
    std::fs::write(pki.config(), config).unwrap();
    let mut gateway = pki.serve();
    let port = gateway.addr.port();
    let call = |client, token| curl_tls(&tls, port, "POST", "/admin/challenges", client, token);

    // The named certificate alone is enough; its entry's name is the requester.
    let (code, status, body) = call(Some("admin"), None);
    assert_eq!((code, status), (0, 201), "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["requester"], "portal");
    assert_eq!(answer["password"].as_str().unwrap().len(), 32);
    // The NDES page too.
    let (_, status, page) = curl_tls(
        &tls,
        port,
        "GET",
        "/certsrv/mscep_admin/",
        Some("admin"),
        None,
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<b>"), "{page}");

    // A certificate of client_ca that no entry names is no admin; a token still is.
    assert_eq!(call(Some("stranger"), None).1, 401);
    let (_, status, body) = call(Some("stranger"), Some(ADMIN_TOKEN));
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["requester"],
        "mdm"
    );
    // Neither certificate nor token.
    assert_eq!(call(None, None).1, 401);
    // The right name from another CA fails the handshake itself.
    let (code, status, _) = call(Some("forged"), None);
    assert!(
        code != 0 && status == 0,
        "a foreign certificate got through: {code} {status}"
    );

    // Devices send no certificate and are served as before.
    let (code, status, caps) = curl_tls(&tls, port, "GET", "/scep?operation=GetCACaps", None, None);
    assert_eq!((code, status), (0, 200), "{caps}");
    assert!(caps.contains("SCEPStandard"), "{caps}");
    gateway.assert_healthy();
}

#[test]
fn admin_endpoint_is_404_unless_configured() {
    // The static mode of `init`.
    let gateway = Pki::init(&Options::default()).serve();
    assert_eq!(admin(gateway.addr, Some(ADMIN_TOKEN), "").0, 404);
    assert_eq!(get(gateway.addr, "/certsrv/mscep_admin/").status, 404);
    // One-time without admin tokens: the CLI only.
    let pki = pki_with("[challenge]\nmode = \"one-time\"\n", &Options::default());
    let gateway = pki.serve();
    assert_eq!(admin(gateway.addr, Some(ADMIN_TOKEN), "").0, 404);
}

#[test]
fn one_time_password_cache_is_bounded_per_requester() {
    let pki = one_time_pki("max_outstanding_per_requester = 2", &Options::default());
    let gateway = pki.serve();
    let first = new_password(gateway.addr, "");
    new_password(gateway.addr, "{}");
    let (status, value) = admin(gateway.addr, Some(ADMIN_TOKEN), "");
    assert_eq!(status, 429);
    assert!(value["error"]
        .as_str()
        .unwrap()
        .contains("password cache full"));
    // A named requester has its own cache.
    let (status, value) = admin(gateway.addr, Some(ADMIN_TOKEN), r#"{"requester":"alice"}"#);
    assert_eq!(status, 201);
    assert_eq!(value["requester"], "mdm/alice");
    // Using a password frees its place.
    Device::new("cache-1")
        .enroll(gateway.addr, &first)
        .assert_success();
    new_password(gateway.addr, "");
}

#[test]
fn one_time_password_expires() {
    let pki = one_time_pki("validity_secs = 1", &Options::default());
    let gateway = pki.serve();
    let password = new_password(gateway.addr, "");
    std::thread::sleep(Duration::from_millis(2500));
    Device::new("late")
        .enroll(gateway.addr, &password)
        .assert_bad_request();
}

#[test]
fn one_time_password_bound_to_a_common_name() {
    let pki = one_time_pki("", &Options::default());
    let gateway = pki.serve();
    let password = new_password(gateway.addr, r#"{"cn_pattern":"printer-[0-9]+"}"#);
    let text = Device::new("laptop-1")
        .enroll(gateway.addr, &password)
        .assert_bad_request();
    assert!(text.contains("commonName"), "{text}");
    let password = new_password(gateway.addr, r#"{"cn_pattern":"printer-[0-9]+"}"#);
    Device::new("printer-42")
        .enroll(gateway.addr, &password)
        .assert_success();
    let (status, _) = admin(gateway.addr, Some(ADMIN_TOKEN), r#"{"cn_pattern":"("}"#);
    assert_eq!(status, 400);
}

/// Two replicas on one redis-server: a password issued by one is used on the other,
/// then refused on both; the CLI writes into the same Redis.
#[test]
fn one_time_password_is_single_use_across_replicas() {
    let redis = RedisServer::start();
    let options = Options {
        extra_config: vec![("backend".into(), "\"redis\"".into())],
        append: vec![format!("url = \"{}\"", redis.url())],
        ..Options::default()
    };
    let pki = one_time_pki("", &options);
    let replicas = [pki.serve(), pki.serve()];
    let password = new_password(replicas[0].addr, "");
    Device::new("fleet-1")
        .enroll(replicas[1].addr, &password)
        .assert_success();
    for replica in &replicas {
        Device::new("fleet-2")
            .enroll(replica.addr, &password)
            .assert_bad_request();
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scep-gateway"))
        .args(["challenge", "new", "--requester", "ops", "--config"])
        .arg(pki.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_cli = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(from_cli.len(), 32);
    Device::new("fleet-3")
        .enroll(replicas[0].addr, &from_cli)
        .assert_success();
    Device::new("fleet-4")
        .enroll(replicas[1].addr, &from_cli)
        .assert_bad_request();
}

// ---------------------------------------------------------------------------- webhook

const HMAC_KEY: &str = "webhook-hmac-key-for-tests";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Deny,
    Stall,
    Garbage,
}

fn hmac_hex(body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HMAC_KEY.as_bytes());
    hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref())
}

#[test]
fn webhook_allows_denies_and_an_outage_is_503() {
    let verdict = Arc::new(Mutex::new(Verdict::Allow));
    let v = verdict.clone();
    let server = MockServer::start(
        Arc::new(move |r: &Recorded| {
            // Every call is signed over the exact body.
            let signature = r.header("x-scep-signature").unwrap_or("");
            if signature != format!("sha256={}", hmac_hex(&r.body)) {
                return Reply::json(401, json!({"error": "bad signature"}));
            }
            if r.target == "/notify" {
                return Reply::json(204, json!({}));
            }
            match *v.lock().unwrap() {
                Verdict::Allow => Reply::json(200, json!({"allow": true, "profile": "wifi"})),
                Verdict::Deny => {
                    Reply::json(200, json!({"allow": false, "reason": "not in inventory"}))
                }
                Verdict::Stall => Reply {
                    status: 200,
                    body: json!({"allow": true}).to_string(),
                    delay: Duration::from_secs(5),
                },
                Verdict::Garbage => Reply {
                    status: 200,
                    body: "<html>oops".into(),
                    delay: Duration::ZERO,
                },
            }
        }),
        None,
    );
    let pki = pki_with("[challenge]\nmode = \"webhook\"\n", &Options::default());
    let key = secret_file(&pki, "hmac.key", HMAC_KEY);
    let text = std::fs::read_to_string(pki.config()).unwrap().replace(
        "mode = \"webhook\"\n",
        &format!(
            "mode = \"webhook\"\nurl = \"{0}/validate\"\nnotify_url = \"{0}/notify\"\ntimeout_ms = 1000\nhmac_key_file = \"{key}\"\n",
            server.url()
        ),
    );
    std::fs::write(pki.config(), text).unwrap();
    let mut gateway = pki.serve();

    // Allowed: SUCCESS, and the notify webhook gets the serial.
    let device = Device::new("hooked-1");
    let certificate = device
        .enroll(gateway.addr, "hook-secret-1")
        .assert_success();
    let asked = server.wait_for("/validate").json();
    for field in [
        "transaction_id",
        "csr",
        "subject",
        "sans",
        "requested_key_usage",
        "client_address",
        "challenge",
        "message_type",
    ] {
        assert!(asked.get(field).is_some(), "{field} missing in {asked}");
    }
    assert_eq!(asked["challenge"], "hook-secret-1");
    assert_eq!(asked["message_type"], "PKCSReq");
    assert_eq!(asked["client_address"], "127.0.0.1");
    assert_eq!(asked["subject"], "CN=hooked-1");
    assert_eq!(
        asked["transaction_id"],
        device.requester.key_transaction_id().as_str()
    );
    let csr = base64::engine::general_purpose::STANDARD
        .decode(asked["csr"].as_str().unwrap())
        .unwrap();
    assert!(csr.windows(13).any(|w| w == b"hook-secret-1"));
    let notified = server.wait_for("/notify").json();
    let serial = ParsedCertificate::from_der(&certificate)
        .unwrap()
        .serial
        .to_vec();
    assert_eq!(notified["status"], "issued");
    assert_eq!(notified["serial"], hex::encode(&serial));
    assert_eq!(
        notified["certificate"],
        base64::engine::general_purpose::STANDARD.encode(&certificate)
    );
    assert!(notified["not_after"].as_str().unwrap().ends_with('Z'));

    // Denied: FAILURE badRequest with the reason.
    *verdict.lock().unwrap() = Verdict::Deny;
    let text = Device::new("hooked-2")
        .enroll(gateway.addr, "x")
        .assert_bad_request();
    assert!(text.contains("not in inventory"), "{text}");

    // Stalled past timeout_ms, or garbage: the webhook is down, not a denial: 503.
    for outage in [Verdict::Stall, Verdict::Garbage] {
        *verdict.lock().unwrap() = outage;
        let started = std::time::Instant::now();
        match Device::new("hooked-3").enroll(gateway.addr, "x") {
            Sent::Http(503, body) => assert!(body.contains("webhook"), "{body}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    // Back up: the same device's retry goes through (the claim was released).
    *verdict.lock().unwrap() = Verdict::Allow;
    Device::new("hooked-4")
        .enroll(gateway.addr, "x")
        .assert_success();
    gateway.assert_healthy();
    assert!(!gateway.log().contains(HMAC_KEY));
    // Every call to the webhook is timed: the answered ones ok, the outages not.
    let calls = |result| {
        metric(
            gateway.addr,
            "scep_challenge_call_duration_seconds_count",
            &[("kind", "webhook"), ("result", result)],
        )
        .unwrap_or(0.0)
    };
    assert!(calls("ok") >= 2.0, "{}", calls("ok"));
    assert_eq!(calls("error"), 2.0);
}

// ----------------------------------------------------------------------------- Intune

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_SECRET: &str = "entra-client-secret-do-not-log";
const GRAPH_TOKEN: &str = "graph-access-token-do-not-log";
const INTUNE_TOKEN: &str = "intune-access-token-do-not-log";
const SERVICE_PATH: &str =
    "/RACerts/ScepRequestValidationFEService/Gateway/StatelessScepRequestValidationService";
const INTUNE_SCOPE: &str = "https://api.manage.microsoft.com//.default";

/// How the fake Intune behaves now.
struct IntuneState {
    /// What the gateway sent that the reference client would not have.
    violations: Vec<String>,
    token_up: bool,
    validate_code: &'static str,
    success_status: u16,
    /// How long successNotification takes to answer.
    success_delay: Duration,
}

/// Checks what Intune's reference client sends; an answer of 418 marks a violation.
fn fake_intune(base: Arc<Mutex<String>>, state: Arc<Mutex<IntuneState>>) -> mock::Handler {
    Arc::new(move |r: &Recorded| {
        let (token_up, validate_code, success_status, success_delay) = {
            let s = state.lock().unwrap();
            (
                s.token_up,
                s.validate_code,
                s.success_status,
                s.success_delay,
            )
        };
        let violation = |what: &str| {
            let mut s = state.lock().unwrap();
            s.violations
                .push(format!("{what}: {} {}", r.method, r.target));
            Reply::json(418, json!({"violation": what}))
        };
        let base = base.lock().unwrap().clone();
        if r.target == format!("/{TENANT}/oauth2/v2.0/token") {
            if !token_up {
                return Reply::json(503, json!({"error": "temporarily_unavailable"}));
            }
            let form: Vec<(String, String)> = String::from_utf8_lossy(&r.body)
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| {
                    let v = percent_decode(v);
                    (k.to_owned(), v)
                })
                .collect();
            let field = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
            if r.method != "POST"
                || field("grant_type") != Some("client_credentials")
                || field("client_id") != Some(CLIENT_ID)
                || !(field("client_secret") == Some(CLIENT_SECRET)
                    || (field("client_secret").is_none()
                        && field("client_assertion_type")
                            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                        && field("client_assertion").is_some()))
            {
                return violation("token form");
            }
            let token = match field("scope") {
                Some(s) if s == format!("{base}/.default") => GRAPH_TOKEN,
                Some(INTUNE_SCOPE) => INTUNE_TOKEN,
                _ => return violation("scope"),
            };
            return Reply::json(
                200,
                json!({"token_type": "Bearer", "expires_in": 3599, "access_token": token}),
            );
        }
        if r.target
            == "/v1.0/servicePrincipals/appId=0000000a-0000-0000-c000-000000000000/endpoints"
        {
            if r.method != "GET"
                || r.header("authorization") != Some(&format!("Bearer {GRAPH_TOKEN}"))
                || r.header("client-request-id").is_none_or(|v| v.len() != 36)
            {
                return violation("discovery headers");
            }
            return Reply::json(
                200,
                json!({"value": [
                    {"providerName": "SomeOtherService", "uri": "https://other.invalid/x"},
                    {"providerName": "scepREQUESTvalidationFEService", "uri": format!("{base}{SERVICE_PATH}")},
                ]}),
            );
        }
        let Some(action) = r
            .target
            .strip_prefix(&format!("{SERVICE_PATH}/ScepActions/"))
        else {
            return Reply::json(404, json!({}));
        };
        if r.method != "POST"
            || r.header("authorization") != Some(&format!("Bearer {INTUNE_TOKEN}"))
            || r.header("content-type") != Some("application/json")
            || r.header("client-request-id").is_none_or(|v| v.len() != 36)
            || r.header("api-version") != Some("2018-02-20")
            || r.header("useragent")
                .is_none_or(|v| !v.starts_with("scep-gateway/"))
        {
            return violation("ScepActions headers");
        }
        let body = r.json();
        let ok = Reply::json(200, json!({"code": "Success", "errorDescription": ""}));
        match action {
            "validateRequest" => {
                let req = &body["request"];
                if !(req["transactionId"].is_string()
                    && req["certificateRequest"].is_string()
                    && req["callerInfo"].is_string())
                {
                    return violation("validateRequest fields");
                }
                Reply::json(
                    200,
                    json!({"code": validate_code, "errorDescription": "as configured"}),
                )
            }
            "successNotification" => {
                let n = &body["notification"];
                for f in [
                    "transactionId",
                    "certificateRequest",
                    "certificateThumbprint",
                    "certificateSerialNumber",
                    "certificateExpirationDateUtc",
                    "issuingCertificateAuthority",
                    "callerInfo",
                    "caConfiguration",
                    "certificateAuthority",
                ] {
                    if !n[f].is_string() {
                        return violation(f);
                    }
                }
                if success_status != 200 {
                    return Reply::json(success_status, json!({"error": "boom"}));
                }
                Reply {
                    delay: success_delay,
                    ..ok
                }
            }
            "failureNotification" => {
                let n = &body["notification"];
                if !(n["transactionId"].is_string()
                    && n["certificateRequest"].is_string()
                    && n["hResult"].is_number()
                    && n["errorDescription"]
                        .as_str()
                        .is_some_and(|d| d.len() <= 255)
                    && n["callerInfo"].is_string())
                {
                    return violation("failureNotification fields");
                }
                ok
            }
            _ => Reply::json(404, json!({})),
        }
    })
}

fn percent_decode(v: &str) -> String {
    percent_encoding::percent_decode_str(&v.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

struct IntuneFixture {
    server: MockServer,
    state: Arc<Mutex<IntuneState>>,
    pki: Pki,
    _tls: tempfile::TempDir,
}

fn intune_fixture(token_up: bool) -> IntuneFixture {
    intune_fixture_with(token_up, false)
}

/// `certificate`: authenticate with a certificate credential (`app.pem`, `app.key` in the
/// TLS folder) instead of the client secret.
fn intune_fixture_with(token_up: bool, certificate: bool) -> IntuneFixture {
    let tls = tempfile::tempdir().unwrap();
    let (ca, cert, key) = mock::tls_files(tls.path());
    let state = Arc::new(Mutex::new(IntuneState {
        violations: Vec::new(),
        token_up,
        validate_code: "Success",
        success_status: 200,
        success_delay: Duration::ZERO,
    }));
    let base = Arc::new(Mutex::new(String::new()));
    let server = MockServer::start(
        fake_intune(base.clone(), state.clone()),
        Some((&cert, &key)),
    );
    *base.lock().unwrap() = server.url();
    let pki = pki_with("[challenge]\nmode = \"intune\"\n", &Options::default());
    let credential = if certificate {
        let out = std::process::Command::new("openssl")
            .current_dir(tls.path())
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "app.key",
            ])
            .args([
                "-out",
                "app.pem",
                "-subj",
                "/CN=scep-gateway app",
                "-days",
                "1",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        format!(
            "client_certificate = \"{}\"\nclient_key = \"{}\"",
            tls.path().join("app.pem").display(),
            tls.path().join("app.key").display()
        )
    } else {
        let secret = secret_file(&pki, "entra.secret", CLIENT_SECRET);
        format!("client_secret_file = \"{secret}\"")
    };
    let text = std::fs::read_to_string(pki.config()).unwrap().replace(
        "mode = \"intune\"\n",
        &format!(
            "mode = \"intune\"\ntenant = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n{credential}\nlogin_url = \"{0}\"\ngraph_url = \"{0}\"\nca_file = \"{1}\"\ntimeout_ms = 3000\nretries = 1\n",
            server.url(),
            ca.display()
        ),
    );
    std::fs::write(pki.config(), text).unwrap();
    IntuneFixture {
        server,
        state,
        pki,
        _tls: tls,
    }
}

/// An Intune-sized challenge: a few KiB of base64-looking text.
fn intune_challenge(tag: &str) -> String {
    let mut c = format!("MIIV{tag}");
    while c.len() < 4000 {
        c.push_str(
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk",
        );
    }
    c
}

fn assert_no_violation(state: &Mutex<IntuneState>) {
    let violations = &state.lock().unwrap().violations;
    assert!(violations.is_empty(), "{violations:#?}");
}

const FAILURE_CODES: &[&str] = &[
    "Unknown",
    "CertificateRequestDecodingFailed",
    "ChallengePasswordMissing",
    "ChallengeDeserializationError",
    "ChallengeDecryptionError",
    "ChallengeDecodingError",
    "ChallengeInvalidTimestamp",
    "ChallengeExpired",
    "SubjectNameMissing",
    "SubjectNameMismatch",
    "SubjectAltNameMissing",
    "SubjectAltNameMismatch",
    "KeyUsageMismatch",
    "KeyLengthMismatch",
    "EnhancedKeyUsageMissing",
    "EnhancedKeyUsageMismatch",
    "AadKeyIdentifierListMissing",
    "RegisteredKeyMismatch",
    "SigningCertThumbprintMismatch",
    "ScepProfileNoLongerTargetedToTheClient",
    "SignatureValidationFailed",
    "BadCertificateRequestIdInChallenge",
    "BadDeviceIdInChallenge",
    "BadUserIdInChallenge",
];

/// Intune acknowledges the issuance only after the transaction's claim has lapsed (here
/// 2.5 s for a 2 s claim; Intune's own timeout is 3 s): that counts as no
/// acknowledgement, so the certificate is withheld and revoked, not recorded while the
/// device's retry, winning the lapsed claim, gets a second one.
#[test]
fn an_intune_acknowledgement_after_the_claim_lapsed_withholds_the_certificate() {
    let fx = intune_fixture(true);
    let text = std::fs::read_to_string(fx.pki.config()).unwrap();
    let short = text
        .replace("request_timeout_secs = 30", "request_timeout_secs = 2")
        .replace("# claim_lease_secs = 30", "claim_lease_secs = 2");
    assert_ne!(short, text);
    std::fs::write(fx.pki.config(), short).unwrap();
    fx.state.lock().unwrap().success_delay = Duration::from_millis(2500);
    let mut gateway = fx.pki.serve();
    let device = Device::new("late-acknowledgement");
    match device.enroll(gateway.addr, &intune_challenge("late")) {
        Sent::Http(503, _) => {}
        other => panic!("{other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.log().contains("withheld certificate revoked") {
        assert!(Instant::now() < deadline, "{}", gateway.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = gateway.log();
    assert!(
        log.contains("did not acknowledge the issuance before the transaction's claim ends"),
        "{log}"
    );

    // Intune answers in time again: the retry gets a certificate, not the withheld one.
    fx.state.lock().unwrap().success_delay = Duration::ZERO;
    let certificate = device
        .enroll(gateway.addr, &intune_challenge("late"))
        .assert_success();
    let serial = hex::encode(ParsedCertificate::from_der(&certificate).unwrap().serial);
    let log = gateway.log();
    let revoked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("withheld certificate revoked"))
        .collect();
    assert_eq!(revoked.len(), 1, "{log}");
    assert!(!revoked[0].contains(&serial), "{log}");
    assert_no_violation(&fx.state);
    gateway.assert_healthy();
}

#[test]
fn intune_validation_success_failures_and_withheld_certificates() {
    let fx = intune_fixture(true);
    let mut gateway = fx.pki.serve();

    // Success: a certificate, and a successNotification that names it.
    let device = Device::new("intune-device-1");
    let challenge = intune_challenge("one");
    let certificate = device.enroll(gateway.addr, &challenge).assert_success();
    let validate = fx
        .server
        .wait_for(&format!("{SERVICE_PATH}/ScepActions/validateRequest"))
        .json();
    let tid = device.requester.key_transaction_id().as_str().to_owned();
    assert_eq!(validate["request"]["transactionId"], tid.as_str());
    let csr = base64::engine::general_purpose::STANDARD
        .decode(validate["request"]["certificateRequest"].as_str().unwrap())
        .unwrap();
    assert!(csr
        .windows(challenge.len())
        .any(|w| w == challenge.as_bytes()));
    let n = fx
        .server
        .wait_for(&format!("{SERVICE_PATH}/ScepActions/successNotification"))
        .json()["notification"]
        .clone();
    let parsed = ParsedCertificate::from_der(&certificate).unwrap();
    let sha1 =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &certificate);
    assert_eq!(n["transactionId"], tid.as_str());
    assert_eq!(n["certificateThumbprint"], hex::encode_upper(sha1.as_ref()));
    assert_eq!(
        n["certificateSerialNumber"],
        hex::encode_upper(parsed.serial)
    );
    assert_eq!(
        n["certificateExpirationDateUtc"],
        scep_gateway::challenge::intune::expiration_text(parsed.not_after)
    );
    assert!(n["issuingCertificateAuthority"]
        .as_str()
        .unwrap()
        .contains("CN="));

    // Each failure code: FAILURE badRequest, no certificate, no success notification.
    let failing = Device::new("intune-device-2");
    for code in FAILURE_CODES {
        fx.state.lock().unwrap().validate_code = code;
        let before = fx
            .server
            .requests_to(&format!("{SERVICE_PATH}/ScepActions/successNotification"))
            .len();
        let text = failing
            .enroll(gateway.addr, &intune_challenge(code))
            .assert_bad_request();
        assert!(text.contains(code), "{code}: {text}");
        assert_eq!(
            fx.server
                .requests_to(&format!("{SERVICE_PATH}/ScepActions/successNotification"))
                .len(),
            before,
            "{code}"
        );
    }

    // The success notification fails: the certificate is withheld, Intune is told, and
    // the retry (same transaction) is not answered with the withheld certificate.
    {
        let mut s = fx.state.lock().unwrap();
        s.validate_code = "Success";
        s.success_status = 500;
    }
    let unlucky = Device::new("intune-device-3");
    let text = unlucky
        .enroll(gateway.addr, &intune_challenge("three"))
        .assert_bad_request();
    assert!(text.contains("withheld"), "{text}");
    let failure = fx
        .server
        .wait_for(&format!("{SERVICE_PATH}/ScepActions/failureNotification"))
        .json();
    assert_eq!(
        failure["notification"]["transactionId"],
        unlucky.requester.key_transaction_id().as_str()
    );
    assert_eq!(failure["notification"]["hResult"], 2147549183u64);
    fx.state.lock().unwrap().success_status = 200;
    let retried = unlucky
        .enroll(gateway.addr, &intune_challenge("three"))
        .assert_success();
    let withheld_serials: Vec<_> = fx
        .server
        .requests_to(&format!("{SERVICE_PATH}/ScepActions/successNotification"))
        .iter()
        .map(|r| r.json()["notification"]["certificateSerialNumber"].clone())
        .collect();
    let retried_serial = hex::encode_upper(ParsedCertificate::from_der(&retried).unwrap().serial);
    assert_eq!(
        withheld_serials.last().unwrap(),
        &Value::from(retried_serial.clone())
    );
    assert_ne!(
        withheld_serials[withheld_serials.len() - 2],
        Value::from(retried_serial)
    );
    // The withheld certificate is revoked (the embedded CA's next CRL lists it).
    let withheld = withheld_serials[withheld_serials.len() - 2]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    let log = gateway.log();
    assert!(
        log.lines()
            .any(|l| l.contains("withheld certificate revoked") && l.contains(&withheld)),
        "{log}"
    );

    // Discovery and tokens were fetched once for all of that.
    assert_eq!(fx.server.requests_to("/v1.0/servicePrincipals").len(), 1);
    assert_eq!(fx.server.requests_to(&format!("/{TENANT}/oauth2")).len(), 2);
    assert_no_violation(&fx.state);
    // Each kind of outbound Intune call is timed.
    for kind in [
        "intune_token",
        "intune_discovery",
        "intune_validate",
        "intune_notify",
    ] {
        let ok = [("kind", kind), ("result", "ok")];
        let count = metric(
            gateway.addr,
            "scep_challenge_call_duration_seconds_count",
            &ok,
        );
        assert!(count.is_some_and(|n| n >= 1.0), "{kind}: {count:?}");
    }

    gateway.assert_healthy();
    let log = gateway.log();
    for secret in [CLIENT_SECRET, GRAPH_TOKEN, INTUNE_TOKEN, &challenge[..64]] {
        assert!(!log.contains(secret), "{secret} is in the log");
    }
}

#[test]
fn intune_token_endpoint_down_is_a_clear_failure() {
    let fx = intune_fixture(false);
    let mut gateway = fx.pki.serve();
    let device = Device::new("intune-offline");
    let text = device
        .enroll(gateway.addr, &intune_challenge("off"))
        .assert_bad_request();
    assert!(text.contains("token endpoint"), "{text}");
    assert!(text.contains("503"), "{text}");
    // Bounded retries: one try and `retries = 1` more.
    assert_eq!(fx.server.requests_to(&format!("/{TENANT}/oauth2")).len(), 2);
    assert!(fx.server.requests_to(SERVICE_PATH).is_empty());
    // Entra ID back: the same device gets its certificate.
    fx.state.lock().unwrap().token_up = true;
    device
        .enroll(gateway.addr, &intune_challenge("off"))
        .assert_success();
    assert_no_violation(&fx.state);
    gateway.assert_healthy();
    assert!(!gateway.log().contains(CLIENT_SECRET));
}

// ------------------------------------------------------------------------- CSR policy

/// `[challenge.policy]` in front of the static mode: a CSR against it is refused before
/// the challenge is looked at, naming the rule.
#[test]
fn csr_policy_refuses_small_keys_and_foreign_subjects() {
    let pki = Pki::init(&Options::default());
    let text = std::fs::read_to_string(pki.config()).unwrap().replace(
        "[renewal]",
        "[challenge.policy]\nallowed_key_types = [\"rsa\"]\nmin_rsa_bits = 3072\nsubject_pattern = \"CN=kiosk-[0-9]+\"\n\n[renewal]",
    );
    std::fs::write(pki.config(), text).unwrap();
    let gateway = pki.serve();
    let text = Device::new("kiosk-1")
        .enroll(gateway.addr, common::CHALLENGE)
        .assert_bad_request();
    assert!(
        text.contains("CSR policy") && text.contains("3072"),
        "{text}"
    );

    let big = |cn: &str| {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(cn.into(), 3072).unwrap());
        Device {
            requester: Requester::self_signed(key, &common_name(cn).unwrap()).unwrap(),
            cn: cn.into(),
        }
    };
    let text = big("laptop-1")
        .enroll(gateway.addr, common::CHALLENGE)
        .assert_bad_request();
    assert!(text.contains("subject_pattern"), "{text}");
    big("kiosk-2")
        .enroll(gateway.addr, common::CHALLENGE)
        .assert_success();
}

/// The certificate credential: an RS256 client assertion (RFC 7523) with `x5t`, the
/// token endpoint as audience and the client id as issuer and subject, whose signature
/// OpenSSL verifies with the app certificate.
#[test]
fn intune_certificate_credential_signs_a_client_assertion() {
    let fx = intune_fixture_with(true, true);
    let gateway = fx.pki.serve();
    Device::new("intune-cert")
        .enroll(gateway.addr, &intune_challenge("cert"))
        .assert_success();
    assert_no_violation(&fx.state);
    let token_request = fx.server.wait_for(&format!("/{TENANT}/oauth2"));
    let body = String::from_utf8(token_request.body).unwrap();
    let assertion = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("client_assertion="))
        .map(percent_decode)
        .unwrap();
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    let tls = fx._tls.path();
    let app = common::read_der(&tls.join("app.pem"));
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &app);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t"], b64.encode(sha1.as_ref()));
    assert_eq!(
        claims["aud"],
        format!("{}/{TENANT}/oauth2/v2.0/token", fx.server.url())
    );
    assert_eq!(claims["iss"], CLIENT_ID);
    assert_eq!(claims["sub"], CLIENT_ID);
    assert!(claims["exp"].as_u64().unwrap() > claims["nbf"].as_u64().unwrap());
    std::fs::write(tls.join("jwt.input"), format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(tls.join("jwt.sig"), b64.decode(parts[2]).unwrap()).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .current_dir(tls)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        run(&["x509", "-in", "app.pem", "-pubkey", "-noout", "-out", "app.pub"])
            .status
            .success()
    );
    let verified = run(&[
        "dgst",
        "-sha256",
        "-verify",
        "app.pub",
        "-signature",
        "jwt.sig",
        "jwt.input",
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}
