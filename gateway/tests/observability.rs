//! What operators watch, against a real `scep-gateway` process: the `/metrics` families
//! after real enrollments (software keys and SoftHSM2), the admin listener, readiness
//! during a SIGTERM drain while a slow request finishes, and the JSON request log.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{get, must, parse_response, post, sample, Backend, Gateway, Options, CHALLENGE};
use scep_gateway::cms::algorithms::ContentCipher;
use scep_gateway::scep::message::PkiStatus;

use common::device::Device;

fn scrape(addr: std::net::SocketAddr) -> String {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    String::from_utf8(response.body).unwrap()
}

const DAY: f64 = 86_400.0;

fn metrics_after_enrollments(backend: Backend) {
    let mut gateway = Gateway::start(Options {
        backend,
        legacy_des: true,
        ..Options::default()
    });
    let device = Device::new(&gateway, "metrics-1");
    let (message, spec) = device.pkcsreq_in(CHALLENGE, ContentCipher::Aes256Cbc);
    assert_eq!(
        device.send(&gateway, &message, &spec).status,
        PkiStatus::Success
    );
    // The same request again: a retry, answered from the store.
    assert_eq!(
        device.send(&gateway, &message, &spec).status,
        PkiStatus::Success
    );
    // A 3DES envelope (legacy) with a wrong challenge: a FAILURE with a failInfo.
    let legacy = Device::new(&gateway, "metrics-2");
    let (message, spec) = legacy.pkcsreq_in("not-the-challenge", ContentCipher::DesEde3Cbc);
    let reply = legacy.send(&gateway, &message, &spec);
    assert_eq!(reply.status, PkiStatus::Failure);
    let fail_info = reply.fail_info.unwrap().name();
    assert_eq!(get(gateway.addr, "/scep?operation=Nonsense").status, 400);

    let text = scrape(gateway.addr);
    let pkcsreq = [("operation", "PKIOperation"), ("message_type", "pkcsreq")];
    let ok = [&pkcsreq[..], &[("outcome", "success"), ("status", "200")]].concat();
    assert_eq!(must(&text, "scep_requests_total", &ok), 2.0);
    let failed = [
        &pkcsreq[..],
        &[("outcome", "failure"), ("fail_info", fail_info)],
    ]
    .concat();
    assert_eq!(must(&text, "scep_requests_total", &failed), 1.0);
    let get_ca_cert = [("operation", "GetCACert"), ("outcome", "success")];
    assert_eq!(must(&text, "scep_requests_total", &get_ca_cert), 2.0);
    let other = [
        ("operation", "other"),
        ("outcome", "http_error"),
        ("status", "400"),
    ];
    assert_eq!(must(&text, "scep_requests_total", &other), 1.0);

    // Latency: three PKCSReq, all within the 10 s bucket, each at least a few RSA ops.
    let count = must(&text, "scep_request_duration_seconds_count", &pkcsreq);
    assert_eq!(count, 3.0);
    let le10 = [&pkcsreq[..], &[("le", "10")]].concat();
    assert_eq!(
        must(&text, "scep_request_duration_seconds_bucket", &le10),
        3.0
    );
    let le_half_ms = [&pkcsreq[..], &[("le", "0.0005")]].concat();
    assert!(must(&text, "scep_request_duration_seconds_bucket", &le_half_ms) <= 3.0);
    let sum = must(&text, "scep_request_duration_seconds_sum", &pkcsreq);
    assert!(sum > 0.0 && sum < 30.0, "{sum}");

    // Store: one claim won (the first), two lost or conflicting (the retry; the refused
    // request released its claim), one retry answered.
    assert_eq!(
        must(&text, "scep_store_claims_total", &[("outcome", "won")]),
        2.0
    );
    assert_eq!(
        must(&text, "scep_store_claims_total", &[("outcome", "lost")]),
        1.0
    );
    let retries = [("kind", "pkcsreq")];
    assert_eq!(
        must(&text, "scep_store_retries_answered_total", &retries),
        1.0
    );

    // The embedded CA (no [[cas]]) issued once; the refused request never reached it.
    let embedded = [("ca", "embedded"), ("outcome", "success")];
    assert_eq!(must(&text, "scep_ca_requests_total", &embedded), 1.0);
    assert!(sample(&text, "scep_ca_requests_total", &[("outcome", "refused")]).is_none());
    assert_eq!(
        must(&text, "scep_ca_requests_in_flight", &[("ca", "embedded")]),
        0.0
    );

    // Keys: the RA decrypted and signed, the CA signed once.
    let hsm = "scep_hsm_operation_duration_seconds_count";
    assert_eq!(
        must(&text, hsm, &[("key", "ra.key"), ("op", "decrypt")]),
        3.0
    );
    assert_eq!(must(&text, hsm, &[("key", "ra.key"), ("op", "sign")]), 3.0);
    assert_eq!(must(&text, hsm, &[("key", "ca.key"), ("op", "sign")]), 1.0);
    if backend == Backend::SoftHsm {
        let sessions = |state| {
            must(
                &text,
                "scep_hsm_sessions",
                &[("key", "ra.key"), ("state", state)],
            )
        };
        assert!(sessions("max") >= 1.0);
        assert_eq!(sessions("in_use"), 0.0);
        assert!(sessions("idle") >= 1.0);
    } else {
        assert!(sample(&text, "scep_hsm_sessions", &[]).is_none());
    }

    // Certificates: `init` makes a 2-year RA and a 10-year CA.
    let ra = must(&text, "scep_cert_expiry_seconds", &[("role", "ra")]);
    assert!(ra > 700.0 * DAY && ra < 731.0 * DAY, "{ra}");
    let ca = must(
        &text,
        "scep_cert_expiry_seconds",
        &[
            ("role", "ca"),
            ("subject", "CN=SCEP Gateway Development CA"),
        ],
    );
    assert!(ca > ra, "{ca}");

    let legacy = [("algorithm", "des-ede3-cbc")];
    assert_eq!(must(&text, "scep_legacy_crypto_total", &legacy), 1.0);
    assert_eq!(
        must(
            &text,
            "scep_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(must(&text, "scep_config_generation", &[]), 1.0);
    assert_eq!(must(&text, "scep_shutting_down", &[]), 0.0);
    // No probe ran yet: readiness gauges appear with the first /readyz.
    assert_eq!(get(gateway.addr, "/readyz").status, 200);
    let text = scrape(gateway.addr);
    assert_eq!(must(&text, "scep_ready", &[]), 1.0);
    assert_eq!(
        must(&text, "scep_readiness_check", &[("check", "store")]),
        1.0
    );
    assert_eq!(
        must(&text, "scep_readiness_check", &[("check", "hsm")]),
        1.0
    );
    assert!(!text.contains(CHALLENGE) && !text.contains("not-the-challenge"));
    gateway.assert_healthy();
}
backends!(metrics_after_enrollments);

/// A POST whose body is half sent: in flight until [`SlowRequest::finish`].
struct SlowRequest {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowRequest {
    fn start(gateway: &Gateway, body: &[u8]) -> SlowRequest {
        let mut stream = TcpStream::connect(gateway.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "POST /scep?operation=PKIOperation HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        let half = body.len() / 2;
        stream.write_all(&body[..half]).unwrap();
        stream.flush().unwrap();
        SlowRequest {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    fn finish(mut self) -> common::Response {
        self.stream.write_all(&self.rest).unwrap();
        let mut bytes = Vec::new();
        let _ = self.stream.read_to_end(&mut bytes);
        parse_response(&bytes)
    }
}

fn eventually_refused(addr: std::net::SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{addr} still accepts connections");
}

#[test]
fn sigterm_drains_readiness_while_a_slow_request_finishes() {
    let mut gateway = Gateway::start(Options {
        extra_config: vec![("shutdown_delay_secs".into(), "2".into())],
        ..Options::default()
    });
    assert_eq!(get(gateway.addr, "/readyz").body, br#"{"ready":true}"#);
    let device = Device::new(&gateway, "draining");
    let (message, spec) = device.pkcsreq_in(CHALLENGE, ContentCipher::Aes128Cbc);
    let slow = SlowRequest::start(&gateway, &message);

    let signalled = Instant::now();
    gateway.signal_term();
    // Not ready at once, while the listener still accepts (the delay), and alive.
    std::thread::sleep(Duration::from_millis(300));
    let ready = get(gateway.addr, "/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body, br#"{"ready":false,"shutdown":"draining"}"#);
    assert_eq!(get(gateway.addr, "/healthz").status, 200);
    let text = scrape(gateway.addr);
    assert_eq!(must(&text, "scep_shutting_down", &[]), 1.0);
    assert_eq!(must(&text, "scep_ready", &[]), 0.0);
    assert!(signalled.elapsed() < Duration::from_secs(2));
    // After the delay the listener closes; the half-sent request is still served.
    eventually_refused(gateway.addr, Duration::from_secs(5));
    let response = slow.finish();
    assert_eq!(response.status, 200, "{response:?}");
    let reply = device
        .requester
        .read_reply(&response.body, &spec, false)
        .unwrap();
    assert_eq!(reply.status, PkiStatus::Success);
    let status = gateway
        .wait(Duration::from_secs(10))
        .expect("the gateway did not exit after its in-flight request");
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_admin_listener_serves_metrics_and_probes_and_outlives_the_drain() {
    let mut gateway = Gateway::start(Options {
        extra_config: vec![(
            "shutdown_delay_secs".into(),
            "0\nadmin_listen = \"127.0.0.1:0\"".into(),
        )],
        ..Options::default()
    });
    let admin = gateway.admin.expect("the admin address was printed");
    assert_eq!(get(gateway.addr, "/scep?operation=GetCACaps").status, 200);
    // /metrics moved to the admin listener; SCEP is not served there.
    assert_eq!(get(gateway.addr, "/metrics").status, 404);
    assert_eq!(get(admin, "/scep?operation=GetCACaps").status, 404);
    assert_eq!(get(admin, "/healthz").status, 200);
    assert_eq!(get(admin, "/readyz").body, br#"{"ready":true}"#);
    let text = scrape(admin);
    let caps = [("operation", "GetCACaps"), ("outcome", "success")];
    assert_eq!(must(&text, "scep_requests_total", &caps), 1.0);
    assert!(sample(&text, "scep_requests_total", &[("operation", "other")]).is_none());

    let device = Device::new(&gateway, "admin-drain");
    let (message, spec) = device.pkcsreq_in(CHALLENGE, ContentCipher::Aes128Cbc);
    let slow = SlowRequest::start(&gateway, &message);
    gateway.signal_term();
    // No delay: the main listener closes at once, the admin one answers "draining".
    eventually_refused(gateway.addr, Duration::from_secs(5));
    let ready = get(admin, "/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body, br#"{"ready":false,"shutdown":"draining"}"#);
    let response = slow.finish();
    assert_eq!(response.status, 200, "{response:?}");
    let reply = device
        .requester
        .read_reply(&response.body, &spec, false)
        .unwrap();
    assert_eq!(reply.status, PkiStatus::Success);
    let status = gateway.wait(Duration::from_secs(10)).expect("no exit");
    assert!(status.success(), "{status:?}");
    eventually_refused(admin, Duration::from_secs(2));
}

#[test]
fn the_json_request_log_has_the_fields_and_no_challenge() {
    let mut gateway = Gateway::start(Options {
        env: vec![("SCEP_LOG_FORMAT".into(), "json".into())],
        ..Options::default()
    });
    let device = Device::new(&gateway, "json-log");
    let (message, spec) = device.pkcsreq_in("wrong-challenge-xyz", ContentCipher::Aes128Cbc);
    assert_eq!(
        device.send(&gateway, &message, &spec).status,
        PkiStatus::Failure
    );
    let (message, spec) = device.pkcsreq_in(CHALLENGE, ContentCipher::Aes128Cbc);
    assert_eq!(
        device.send(&gateway, &message, &spec).status,
        PkiStatus::Success
    );
    gateway.assert_healthy();
    let log = gateway.log();
    assert!(!log.contains(CHALLENGE), "the challenge was logged:\n{log}");
    assert!(!log.contains("wrong-challenge-xyz"), "{log}");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "scep request")
        .collect();
    assert_eq!(requests.len(), 2, "{log}");
    let expected_tid = spec.transaction_id.to_string();
    for (event, outcome) in requests.iter().zip(["badRequest", "success"]) {
        let f = &event["fields"];
        assert_eq!(f["transaction_id"], expected_tid.as_str(), "{event}");
        assert_eq!(f["operation"], "PKIOperation", "{event}");
        assert_eq!(f["message_type"], "pkcsreq", "{event}");
        assert_eq!(f["ca"], "embedded", "{event}");
        assert_eq!(f["status"], 200, "{event}");
        assert!(
            f["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{event}"
        );
        // The first is refused; its failInfo is whatever the reply carried.
        if outcome == "success" {
            assert_eq!(f["outcome"], "success", "{event}");
        } else {
            assert!(
                f["outcome"].as_str().is_some_and(|o| o.starts_with("bad")),
                "{event}"
            );
        }
    }
}

#[test]
fn the_redis_store_records_its_round_trips_and_errors() {
    let mut redis = common::redis::RedisServer::start();
    let mut gateway = Gateway::start(Options {
        extra_config: vec![("backend".into(), "\"redis\"".into())],
        append: vec![
            format!("url = \"{}\"", redis.url()),
            "command_timeout_ms = 300".into(),
        ],
        ..Options::default()
    });
    let device = Device::new(&gateway, "redis-metrics");
    let (message, spec) = device.pkcsreq_in(CHALLENGE, ContentCipher::Aes128Cbc);
    assert_eq!(
        device.send(&gateway, &message, &spec).status,
        PkiStatus::Success
    );
    let text = scrape(gateway.addr);
    let claim = [("backend", "redis"), ("op", "claim"), ("result", "ok")];
    assert_eq!(
        must(&text, "scep_store_command_duration_seconds_count", &claim),
        1.0
    );
    assert!(sample(&text, "scep_store_command_errors_total", &[]).is_none());

    // Redis gone: the next enrollment gets 503, counted as a store error and an HTTP error.
    redis.stop();
    let other = Device::new(&gateway, "redis-down");
    let (message, _) = other.pkcsreq_in(CHALLENGE, ContentCipher::Aes128Cbc);
    let response = post(gateway.addr, "/scep?operation=PKIOperation", &message);
    assert_eq!(response.status, 503);
    let text = scrape(gateway.addr);
    let errors = [("backend", "redis"), ("op", "claim")];
    assert!(must(&text, "scep_store_command_errors_total", &errors) >= 1.0);
    let unavailable = [
        ("operation", "PKIOperation"),
        ("outcome", "http_error"),
        ("status", "503"),
    ];
    assert_eq!(must(&text, "scep_requests_total", &unavailable), 1.0);
    gateway.assert_healthy();
}
