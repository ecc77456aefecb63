//! Offline checks of `deploy/`: every YAML parses, every kustomization names files that
//! exist, each overlay renders (`kubectl kustomize`) into
//! manifests that keep the deployment policy (probes on the admin port, non-root
//! read-only container, secrets by reference, grace period above the drain), the
//! ConfigMap's gateway.toml loads with the gateway's own parser, and the alert rules and
//! the dashboard name only metrics that `gateway/src/metrics.rs` defines and the README
//! documents.
//!
//! YAML is read by Python's PyYAML (Debian `python3-yaml`, installed by scripts/test-all):
//! the gateway has no YAML parser of its own and needs none.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::require_tool;
use scep_gateway::config::{FileConfig, KeyRef, StoreBackend};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// Every document of a YAML stream, as JSON.
fn yaml_docs(yaml: &[u8]) -> Vec<Value> {
    let mut child = Command::new(require_tool("python3"))
        .args([
            "-c",
            "import sys, json, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML (Debian python3-yaml; scripts/test-all installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_yaml_parses_and_kustomizations_name_existing_files() {
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    assert!(files.len() >= 15, "{files:?}");
    for file in &files {
        let docs = yaml_docs(&std::fs::read(file).unwrap());
        assert!(!docs.is_empty(), "{} is empty", file.display());
        // A JSON 6902 patch (kustomization `patchesJson6902`) is a list of operations.
        if file.to_string_lossy().ends_with(".patch.yaml") {
            let ops = docs[0].as_array().expect("a JSON patch is a list");
            assert!(
                !ops.is_empty()
                    && ops
                        .iter()
                        .all(|o| o["op"].is_string() && o["path"].is_string()),
                "{}: not a JSON patch",
                file.display()
            );
            continue;
        }
        for doc in &docs {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{}: a document without apiVersion/kind",
                file.display()
            );
        }
        if file.file_name().unwrap() != "kustomization.yaml" {
            continue;
        }
        let k = &docs[0];
        let dir = file.parent().unwrap();
        let mut named: Vec<&str> = Vec::new();
        for list in [
            "bases",
            "resources",
            "patchesStrategicMerge",
            "patchesJson6902",
            "configMapGenerator",
        ] {
            for item in k[list].as_array().into_iter().flatten() {
                match item {
                    Value::String(p) => named.push(p),
                    _ => {
                        named.extend(item["path"].as_str());
                        for f in item["files"].as_array().into_iter().flatten() {
                            named.push(f.as_str().unwrap());
                        }
                    }
                }
            }
        }
        for p in named {
            assert!(
                dir.join(p).exists(),
                "{} names {p}, which does not exist",
                file.display()
            );
        }
    }
    // The Dockerfile builds the gateway locked, runs as a numeric non-root user and
    // bakes in no configuration.
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked -p scep-gateway"));
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(
        !dockerfile.contains("COPY --from=build /src/"),
        "only the binary"
    );
    assert!(!dockerfile.to_lowercase().contains("gateway.toml /"));
}

/// An overlay rendered by `kubectl kustomize` (scripts/test-all installs Debian's
/// kubectl when none is there): the YAML stream.
fn render(overlay: &str) -> Vec<u8> {
    let out = Command::new(require_tool("kubectl"))
        .arg("kustomize")
        .arg(deploy().join("kubernetes/overlays").join(overlay))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The manifests of an overlay, rendered.
fn manifests(overlay: &str) -> Vec<Value> {
    yaml_docs(&render(overlay))
}

fn one<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name_prefix}*: {found:?}");
    found[0]
}

fn check_overlay(overlay: &str) {
    let docs = manifests(overlay);
    let config_map = one(&docs, "ConfigMap", "scep-gateway-config");
    let toml = config_map["data"]["gateway.toml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    let config = FileConfig::load(&path).unwrap_or_else(|e| panic!("{overlay}: {e}"));
    assert_eq!(config.store.backend, StoreBackend::Redis);
    assert!(
        config.store.url.is_none(),
        "the Redis URL comes from a Secret"
    );
    let admin = config.server.admin_listen.expect("admin_listen is set");
    assert!(config.server.shutdown_delay_secs >= 5);

    let deployment = one(&docs, "Deployment", "scep-gateway");
    let pod = &deployment["spec"]["template"]["spec"];
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.server.shutdown_delay_secs + config.server.shutdown_grace_secs,
        "{overlay}: terminationGracePeriodSeconds {grace} must exceed the drain"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    let containers = pod["containers"].as_array().unwrap();
    let gateway = containers.iter().find(|c| c["name"] == "gateway").unwrap();
    for c in containers
        .iter()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
    {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{}",
            c["name"]
        );
        for r in ["requests", "limits"] {
            for what in ["cpu", "memory"] {
                assert!(
                    c["resources"][r][what].is_string(),
                    "{}: {r}.{what}",
                    c["name"]
                );
            }
        }
    }
    let port = |name: &str| {
        gateway["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port("admin"), u64::from(admin.port()));
    assert_eq!(port("scep"), u64::from(config.server.listen.port()));
    let probe = |which: &str| &gateway[which]["httpGet"];
    assert_eq!(probe("livenessProbe")["path"], "/healthz");
    assert_eq!(probe("readinessProbe")["path"], "/readyz");
    assert_eq!(probe("livenessProbe")["port"], "admin");
    assert_eq!(probe("readinessProbe")["port"], "admin");

    // Every secret the config reads from the environment is a secretKeyRef, no value.
    let env = gateway["env"].as_array().unwrap();
    let from_secret = |name: &str| {
        env.iter().any(|e| {
            e["name"] == name && e["value"].is_null() && e["valueFrom"]["secretKeyRef"].is_object()
        })
    };
    let mut needed = vec![config.store.url_env.clone().unwrap()];
    if let scep_gateway::config::ChallengeConfig::Static {
        password_env: Some(v),
        ..
    } = &config.challenge
    {
        needed.push(v.clone());
    }
    let ca_key = config.ca.as_ref().map(|ca| &ca.key);
    for key in std::iter::once(&config.ra.key).chain(ca_key) {
        if let KeyRef::Pkcs11 { pkcs11 } = key {
            needed.extend(pkcs11.pin_env.clone());
            assert!(
                pkcs11.module.starts_with("/opt/hsm"),
                "the module comes from the mounted vendor client"
            );
        }
    }
    for name in &needed {
        assert!(from_secret(name), "{overlay}: {name} is not a secretKeyRef");
    }
    // No secret values in the manifests, except the dev overlay's password-less URL.
    for secret in docs.iter().filter(|d| d["kind"] == "Secret") {
        assert_eq!(overlay, "dev", "{secret}");
        for v in secret["data"].as_object().unwrap().values() {
            let decoded = base64_decode(v.as_str().unwrap());
            assert!(!decoded.contains('@'), "a credential in a dev Secret");
        }
    }

    for kind in [
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceAccount",
    ] {
        one(&docs, kind, "scep-gateway");
    }
    let hpa = one(&docs, "HorizontalPodAutoscaler", "scep-gateway");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    let service = one(&docs, "Service", "scep-gateway");
    assert!(service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics" && p["targetPort"] == "admin"));

    match overlay {
        "dev" => {
            assert_eq!(replicas, 1);
            one(&docs, "Deployment", "scep-redis");
        }
        "production" => {
            assert!(replicas >= 3);
            assert!(pod["affinity"]["podAntiAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]
                .is_array());
            assert!(gateway["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == "/opt/hsm" && m["readOnly"] == true));
            assert!(matches!(config.ra.key, KeyRef::Pkcs11 { .. }));
        }
        _ => unreachable!(),
    }
}

fn base64_decode(s: &str) -> String {
    use base64::Engine;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
}

#[test]
fn the_dev_overlay_keeps_the_policy() {
    check_overlay("dev");
}

#[test]
fn the_production_overlay_keeps_the_policy() {
    check_overlay("production");
}

/// The metric names `gateway/src/metrics.rs` defines.
fn defined_metrics() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo().join("gateway/src/metrics.rs")).unwrap();
    let names: BTreeSet<String> = source
        .split('"')
        .filter(|s| {
            s.starts_with("scep_")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    names
}

/// `scep_...` identifiers of a PromQL expression, histogram suffixes removed.
fn referenced(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("scep_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
            .unwrap_or(name);
        out.push(base.to_owned());
        rest = &tail[end..];
    }
    out
}

fn balanced(expr: &str) -> bool {
    let mut depth = 0i32;
    for c in expr.chars() {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

#[test]
fn alert_rules_and_dashboard_use_defined_and_documented_metrics() {
    let defined = defined_metrics();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for name in &defined {
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is missing from the README's metrics table"
        );
    }

    let rules =
        yaml_docs(&std::fs::read(deploy().join("monitoring/prometheus-rules.yaml")).unwrap());
    assert_eq!(rules[0]["kind"], "PrometheusRule");
    let mut alerts = BTreeSet::new();
    for group in rules[0]["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().expect("alerting rules only");
            let expr = rule["expr"].as_str().unwrap();
            assert!(balanced(expr), "{alert}: unbalanced {expr}");
            let names = referenced(expr);
            assert!(!names.is_empty(), "{alert}");
            for name in names {
                assert!(
                    defined.contains(&name),
                    "{alert}: {name} is not a metric of ours"
                );
            }
            let severity = rule["labels"]["severity"].as_str().unwrap();
            assert!(["warning", "critical"].contains(&severity), "{alert}");
            assert!(rule["annotations"]["summary"].is_string(), "{alert}");
            alerts.insert(alert.to_owned());
        }
    }
    for wanted in [
        "ScepCertificateExpiresSoon",
        "ScepCertificateExpiresVerySoon",
        "ScepNotReady",
        "ScepServerErrorRatioHigh",
        "ScepLatencyP99High",
        "ScepCaBreakerOpen",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing: {alerts:?}");
    }
    // promtool (Debian `prometheus`, installed by scripts/test-all) checks the PromQL itself.
    {
        let promtool = require_tool("promtool");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.json");
        std::fs::write(&file, rules[0]["spec"].to_string()).unwrap();
        let out = Command::new(promtool)
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(deploy().join("monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(balanced(expr), "{expr}");
            for name in referenced(expr) {
                assert!(defined.contains(&name), "dashboard: {name}");
            }
        }
    }
    let monitoring =
        yaml_docs(&std::fs::read(deploy().join("monitoring/servicemonitor.yaml")).unwrap());
    assert_eq!(monitoring[0]["spec"]["endpoints"][0]["port"], "metrics");
}

/// Every manifest validates against the Kubernetes API schemas, offline (PyPI
/// `kubernetes-validate`, installed by scripts/test-all): the rendered overlays.
#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let validate = require_tool("kubernetes-validate");
    let dir = tempfile::tempdir().unwrap();
    let mut targets = Vec::new();
    for overlay in ["dev", "production"] {
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, render(overlay)).unwrap();
        targets.push(file);
    }
    for target in targets {
        let out = Command::new(&validate)
            .arg("--strict")
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not validate:\n{}{}",
            target.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
