//! The Helm chart (`charts/aci-runner-controller`): lint, rendering, values schema, least-privilege
//! RBAC, and server-side dry runs plus a real install against the local kube-apiserver v1.20.2.
//!
//! Helm comes from `scripts/helm` (installed by `scripts/test`); these tests fail, never skip,
//! when it is missing.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use aci_runner_controller::testing::control_plane;
use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("charts/aci-runner-controller")
}

fn max_values() -> PathBuf {
    chart().join("ci/max-values.yaml")
}

/// The cached helm binary; panics with the install command when it is missing.
fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/helm"))
            .arg("--path")
            .output()
            .expect("bash runs scripts/helm");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !path.is_empty(),
            "helm is missing: install it with `scripts/helm version` (or run `scripts/test`, which does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(path)
    })
}

fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let mut cmd = Command::new(helm_bin());
    cmd.args(args);
    // Isolated helm state: no user repositories, plugins or caches leak into the tests.
    let home = std::env::temp_dir().join(format!("aci-rc-helm-home-{}", std::process::id()));
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    match kubeconfig {
        Some(k) => cmd.env("KUBECONFIG", k),
        None => cmd.env("KUBECONFIG", "/nonexistent/kubeconfig"),
    };
    cmd.output().expect("helm runs")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn yaml_docs(s: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(s)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` offline (helm's default capabilities) with extra arguments.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.to_str().unwrap(), "--namespace", "arc-system"];
    args.extend_from_slice(extra);
    let out = helm(&args, None);
    assert!(out.status.success(), "helm template {extra:?} failed:\n{}", text(&out));
    yaml_docs(&String::from_utf8_lossy(&out.stdout))
}

fn render_err(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = helm(&args, None);
    assert!(!out.status.success(), "helm template {extra:?} unexpectedly succeeded");
    text(&out)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered chart"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = docs.iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn args_of(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Every (apiGroup, resource, verb) a role grants, with its resourceNames.
fn grants(role: &Value) -> Vec<(String, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let names: Vec<String> = rule["resourceNames"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    out.push((
                        g.as_str().unwrap().to_string(),
                        r.as_str().unwrap().to_string(),
                        v.as_str().unwrap().to_string(),
                        names.clone(),
                    ));
                }
            }
        }
    }
    out
}

fn pool_grants_expected() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("aci-runners.dev", "runnerpools", "get"),
        ("aci-runners.dev", "runnerpools", "list"),
        ("aci-runners.dev", "runnerpools", "watch"),
        ("aci-runners.dev", "runnerpools", "patch"),
        ("aci-runners.dev", "runnerpools/status", "patch"),
        ("aci-runners.dev", "runnerpools/finalizers", "update"),
        ("", "secrets", "get"),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
    ]
}

fn assert_pool_grants(role: &Value) {
    let mut got: Vec<(String, String, String)> = grants(role)
        .into_iter()
        .map(|(g, r, v, names)| {
            assert!(names.is_empty(), "unexpected resourceNames on {r}");
            (g, r, v)
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String)> =
        pool_grants_expected().into_iter().map(|(g, r, v)| (g.into(), r.into(), v.into())).collect();
    want.sort();
    assert_eq!(got, want, "RunnerPool role grants differ from the least-privilege set");
}

#[test]
fn chart_crd_is_the_single_source() {
    // The chart's crds/runnerpool.yaml is a symlink to the generated crds/runnerpool.yaml...
    let link = chart().join("crds/runnerpool.yaml");
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_symlink(), "{} must be a symlink to crds/runnerpool.yaml", link.display());
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(repo().join("crds/runnerpool.yaml")).unwrap()
    );
    let files: Vec<_> =
        std::fs::read_dir(chart().join("crds")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "unexpected files in the chart's crds/: {files:?}");
    // ...and `helm package` puts the linked file's exact bytes into the chart archive.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().to_str().unwrap();
    let out = helm(&["package", chart().to_str().unwrap(), "--destination", dest], None);
    assert!(out.status.success(), "helm package failed:\n{}", text(&out));
    let tgz = dir.path().join("aci-runner-controller-0.1.0.tgz");
    let st = Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(dir.path()).status().unwrap();
    assert!(st.success(), "tar -xzf {}", tgz.display());
    let packaged = std::fs::read(dir.path().join("aci-runner-controller/crds/runnerpool.yaml")).unwrap();
    let source = std::fs::read(repo().join("crds/runnerpool.yaml")).unwrap();
    assert!(packaged == source, "the packaged chart's CRD differs from crds/runnerpool.yaml");
    assert!(!dir.path().join("aci-runner-controller/ci").exists(), "ci/ values must not be packaged");
}

#[test]
fn helm_lint_strict_is_clean_with_defaults_and_max_values() {
    let (chart, max) = (chart(), max_values());
    for extra in [vec![], vec!["-f", max.to_str().unwrap()]] {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let out = helm(&args, None);
        let t = text(&out);
        assert!(out.status.success(), "helm lint --strict {extra:?} failed:\n{t}");
        assert!(!t.contains("[WARNING]") && !t.contains("[ERROR]"), "helm lint {extra:?}:\n{t}");
        assert!(t.contains("1 chart(s) linted, 0 chart(s) failed"), "{t}");
    }
}

#[test]
fn defaults_render_a_hardened_two_replica_deployment() {
    let docs = render(&[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ],
        "default resources"
    );
    let d = find(&docs, "Deployment", "rel-aci-runner-controller");
    assert_eq!(d["metadata"]["namespace"], "arc-system");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/aci-runners/aci-runner-controller:0.1.0");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for k in ["requests", "limits"] {
        assert!(c["resources"][k]["cpu"].is_string() && c["resources"][k]["memory"].is_string(), "{k}");
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"], "true");
    assert_eq!(
        args_of(d),
        [
            "run",
            "--resync-interval=60s",
            "--leader-election=true",
            "--lease-name=rel-aci-runner-controller",
            "--lease-namespace=arc-system",
            "--health-listen=0.0.0.0:8080",
            "--arm-endpoint=https://management.azure.com",
            "--azure-authority-host=https://login.microsoftonline.com",
            "--log-format=json",
        ]
    );
    // Least privilege: cluster-wide pool rules (all namespaces watched), the Lease only at home.
    assert_pool_grants(find(&docs, "ClusterRole", "rel-aci-runner-controller"));
    let lease = find(&docs, "Role", "rel-aci-runner-controller-leader-election");
    assert_eq!(lease["metadata"]["namespace"], "arc-system");
    let g = grants(lease);
    assert!(g.iter().all(|(grp, r, _, _)| grp == "coordination.k8s.io" && r == "leases"), "{g:?}");
    assert!(g.iter().any(|(_, _, v, n)| v == "create" && n.is_empty()));
    for verb in ["get", "update", "patch"] {
        assert!(
            g.iter().any(|(_, _, v, n)| v == verb && n == &vec!["rel-aci-runner-controller".to_string()]),
            "lease {verb} must be restricted to the lease name: {g:?}"
        );
    }
    // Nothing anywhere may list or watch Secrets, or touch anything with a wildcard.
    for doc in docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role") {
        for (grp, r, v, _) in grants(doc) {
            assert!(grp != "*" && r != "*" && v != "*", "wildcard in {}", doc["metadata"]["name"]);
            assert!(!(r == "secrets" && v != "get"), "secrets {v} granted");
        }
    }
    let svc = find(&docs, "Service", "rel-aci-runner-controller-metrics");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "health");
    let pdb = find(&docs, "PodDisruptionBudget", "rel-aci-runner-controller");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let sa = find(&docs, "ServiceAccount", "rel-aci-runner-controller");
    assert!(sa["metadata"].get("annotations").is_none(), "no client id given, no annotation");
}

#[test]
fn watched_namespaces_get_roles_and_no_cluster_wide_secret_access() {
    let docs = render(&[
        "--set",
        "controller.watchNamespaces={team-a,team-b}",
        "--set",
        "controller.selector=shard=a",
        "--set",
        "azure.workloadIdentity.clientId=11111111-2222-3333-4444-555555555555",
    ]);
    assert!(!docs.iter().any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"));
    for ns in ["team-a", "team-b"] {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        assert_pool_grants(role);
        let rb = docs
            .iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no RoleBinding in {ns}"));
        assert_eq!(rb["subjects"][0]["namespace"], "arc-system");
        assert_eq!(rb["subjects"][0]["name"], "rel-aci-runner-controller");
    }
    let d = find(&docs, "Deployment", "rel-aci-runner-controller");
    let args = args_of(d);
    assert!(args.contains(&"--namespaces=team-a,team-b".to_string()), "{args:?}");
    assert!(args.contains(&"--selector=shard=a".to_string()), "{args:?}");
    let sa = find(&docs, "ServiceAccount", "rel-aci-runner-controller");
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "11111111-2222-3333-4444-555555555555"
    );
}

#[test]
fn client_secret_mode_reads_the_azure_variables_from_a_secret() {
    let docs =
        render(&["--set", "azure.workloadIdentity.enabled=false", "--set", "azure.clientSecretRef=azure-sp"]);
    let d = find(&docs, "Deployment", "rel-aci-runner-controller");
    assert!(d["spec"]["template"]["metadata"]["labels"].get("azure.workload.identity/use").is_none());
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    for key in ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"] {
        let e = env.iter().find(|e| e["name"] == key).unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], "azure-sp");
        assert_eq!(e["valueFrom"]["secretKeyRef"]["key"], key);
        assert!(e.get("value").is_none(), "{key} must never be a literal value");
    }
}

#[test]
fn max_values_render_every_optional_resource() {
    let docs = render(&["-f", max_values().to_str().unwrap()]);
    for kind in ["NetworkPolicy", "Ingress", "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget"] {
        assert!(docs.iter().any(|d| d["kind"] == kind), "{kind} missing with max values");
    }
    let d = find(&docs, "Deployment", "arc-max");
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        "exampleregistry.azurecr.io/platform/aci-runner-controller@sha256:0000000000000000000000000000000000000000000000000000000000000000"
    );
    let args = args_of(d);
    for a in [
        "--webhook-listen=0.0.0.0:8443",
        "--webhook-secret-file=/var/run/secrets/github-webhook/secret",
        "--health-listen=0.0.0.0:9090",
        "--lease-name=arc-max-leader",
        "--resync-interval=2m",
    ] {
        assert!(args.contains(&a.to_string()), "{a} not in {args:?}");
    }
    let vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "github-webhook").unwrap();
    assert_eq!(vol["secret"]["secretName"], "github-webhook");
    assert_eq!(vol["secret"]["items"][0]["path"], "secret");
    let ing = find(&docs, "Ingress", "arc-max-webhook");
    assert_eq!(ing["spec"]["rules"][0]["host"], "runners-webhook.example.com");
    assert_eq!(ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"], "arc-max-webhook");
    let pdb = find(&docs, "PodDisruptionBudget", "arc-max");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(pdb["spec"].get("maxUnavailable").is_none());
    let np = find(&docs, "NetworkPolicy", "arc-max");
    let ingress_ports: Vec<&Value> =
        np["spec"]["ingress"].as_array().unwrap().iter().map(|r| &r["ports"][0]["port"]).collect();
    assert_eq!(ingress_ports, [&Value::from("health"), &Value::from("webhook")]);
}

#[test]
fn prometheus_rule_alerts_on_the_controller_metrics() {
    let docs = render(&["--set", "metrics.prometheusRule.enabled=true"]);
    let rule = find(&docs, "PrometheusRule", "rel-aci-runner-controller");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let by_alert = |name: &str| -> String {
        rules.iter().find(|r| r["alert"] == name).unwrap_or_else(|| panic!("alert {name} missing"))["expr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (alert, metric) in [
        ("AciRunnerPoolStalled", "aci_runner_controller_pool_stalled"),
        ("AciRunnerGarbageCollectionBacklog", "aci_runner_controller_gc_pending"),
        ("AciRunnerGithubRateLimitLow", "aci_runner_controller_github_rate_limit_remaining"),
        ("AciRunnerArmThrottling", "aci_runner_controller_arm_throttled_total"),
        ("AciRunnerReconcileErrors", "aci_runner_controller_reconcile_errors_total"),
    ] {
        let expr = by_alert(alert);
        assert!(expr.contains(metric), "{alert}: {expr}");
        assert!(expr.contains(r#"job="rel-aci-runner-controller-metrics""#), "{alert}: {expr}");
    }
    // Prometheus templating survives Helm's templating.
    let stalled = rules.iter().find(|r| r["alert"] == "AciRunnerPoolStalled").unwrap();
    assert!(stalled["annotations"]["summary"].as_str().unwrap().contains("{{ $labels.pool }}"));
    // Alerts can be switched off one by one.
    let docs = render(&[
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.armThrottling.enabled=false",
    ]);
    let rule = find(&docs, "PrometheusRule", "rel-aci-runner-controller");
    let names: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"AciRunnerArmThrottling") && names.contains(&"AciRunnerPoolStalled"),
        "{names:?}"
    );
}

#[test]
fn values_schema_and_guards_reject_bad_values() {
    for (set, expect) in [
        ("replicaCount=two", "/replicaCount"),
        ("controller.resyncInterval=often", "/controller/resyncInterval"),
        ("controller.logFormat=xml", "/controller/logFormat"),
        ("controller.typo=1", "typo"),
        ("image.digest=latest", "/image/digest"),
        ("webhook.ingress.pathType=Regex", "/webhook/ingress/pathType"),
    ] {
        let t = render_err(&["--set", set]);
        assert!(t.contains(expect), "--set {set}: error does not name {expect}:\n{t}");
    }
    let t = render_err(&["--set", "webhook.enabled=true"]);
    assert!(t.contains("webhook.secret.existingSecret"), "{t}");
    let t = render_err(&["--set", "controller.leaderElection.enabled=false"]);
    assert!(t.contains("leaderElection"), "{t}");
    let t = render_err(&["--set", "azure.clientSecretRef=sp"]);
    assert!(t.contains("not both"), "{t}");
    let t = render_err(&[
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.secret.existingSecret=s",
        "--set",
        "webhook.ingress.enabled=true",
    ]);
    assert!(t.contains("webhook.ingress.host"), "{t}");
    // One replica without leader election is allowed.
    render(&["--set", "replicaCount=1", "--set", "controller.leaderElection.enabled=false"]);
}

// ---- against the local control plane (kube-apiserver v1.20.2) ----

fn kubectl(cp: &control_plane::ControlPlane, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is part of the machine image");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out))
}

/// Minimal stand-ins for the Prometheus Operator CRDs (absent on the local control plane), so
/// the ServiceMonitor and PrometheusRule of the maximal values are checked by the server too.
const MONITORING_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn ensure_namespace(cp: &control_plane::ControlPlane, ns: &str) {
    let (ok, out) = kubectl(cp, &["create", "namespace", ns], None);
    assert!(ok || out.contains("AlreadyExists"), "{out}");
}

fn setup_monitoring_crds(cp: &control_plane::ControlPlane) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let (ok, out) = kubectl(cp, &["apply", "-f", "-"], Some(MONITORING_CRDS.as_bytes()));
        assert!(ok, "{out}");
        let (ok, out) = kubectl(
            cp,
            &[
                "wait",
                "--for",
                "condition=established",
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/prometheusrules.monitoring.coreos.com",
                "--timeout=30s",
            ],
            None,
        );
        assert!(ok, "{out}");
    });
}

/// `helm template --dry-run=server` (capabilities from the server) piped to
/// `kubectl apply --dry-run=server`.
fn server_dry_run(cp: &control_plane::ControlPlane, ns: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.to_str().unwrap(), "--namespace", ns, "--dry-run=server"];
    args.extend_from_slice(extra);
    let out = helm(&args, Some(&cp.kubeconfig));
    assert!(out.status.success(), "helm template --dry-run=server {extra:?}:\n{}", text(&out));
    let (ok, applied) = kubectl(cp, &["apply", "--dry-run=server", "-f", "-"], Some(&out.stdout));
    assert!(ok, "kubectl apply --dry-run=server rejected the chart {extra:?}:\n{applied}");
    let docs = yaml_docs(&String::from_utf8_lossy(&out.stdout));
    for d in &docs {
        let name = d["metadata"]["name"].as_str().unwrap();
        let kind = d["kind"].as_str().unwrap().to_lowercase();
        assert!(
            applied.contains(&format!("/{name} created (server dry run)"))
                && applied.to_lowercase().contains(&kind),
            "{kind}/{name} not confirmed by the server:\n{applied}"
        );
    }
    docs
}

#[test]
fn rendered_chart_passes_server_dry_run_on_kubernetes_1_20() {
    let cp = control_plane::shared();
    // The chart's CRD (kubectl's client-side check rejects the CEL rules before 1.25).
    let (ok, out) = kubectl(
        cp,
        &["apply", "--validate=false", "--dry-run=server", "-f", chart().join("crds").to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}");
    let ns = format!("arc-dry-{}", std::process::id());
    ensure_namespace(cp, &ns);
    let docs = server_dry_run(cp, &ns, &[]);
    // Kubernetes 1.20 has no policy/v1: the chart must pick policy/v1beta1 from the server's APIs.
    let pdb = docs.iter().find(|d| d["kind"] == "PodDisruptionBudget").unwrap();
    assert_eq!(pdb["apiVersion"], "policy/v1beta1");

    setup_monitoring_crds(cp);
    for n in ["ci-runners-a", "ci-runners-b"] {
        ensure_namespace(cp, n);
    }
    let docs = server_dry_run(cp, &ns, &["-f", max_values().to_str().unwrap()]);
    assert!(docs.iter().any(|d| d["kind"] == "PrometheusRule"));
    assert!(docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
}

#[test]
fn helm_install_on_kubernetes_1_20_grants_least_privilege() {
    let cp = control_plane::shared();
    let id = std::process::id();
    let (home, team, other) = (format!("arc-home-{id}"), format!("arc-team-{id}"), format!("arc-other-{id}"));
    for ns in [&home, &team, &other] {
        ensure_namespace(cp, ns);
    }
    let chart = chart();
    let watch = format!("controller.watchNamespaces={{{team}}}");
    // Helm 4 applies server-side by default; servers before 1.25 reject the CRD's CEL rules in a
    // server-side apply, so old clusters install with --server-side=false (docs/helm.md).
    let out = helm(
        &[
            "install",
            "arc",
            chart.to_str().unwrap(),
            "--namespace",
            &home,
            "--server-side=false",
            "--set",
            &watch,
            "--set",
            "azure.workloadIdentity.clientId=11111111-2222-3333-4444-555555555555",
        ],
        Some(&cp.kubeconfig),
    );
    assert!(out.status.success(), "helm install failed:\n{}", text(&out));
    let (ok, out) = kubectl(cp, &["get", "crd", "runnerpools.aci-runners.dev"], None);
    assert!(ok, "the chart did not install the CRD: {out}");

    let sa = format!("system:serviceaccount:{home}:arc-aci-runner-controller");
    let can = |verb: &str, resource: &str, ns: &str| -> bool {
        // `resource[/name]` or `resource[:subresource]`.
        let mut args = vec!["auth", "can-i", verb];
        match resource.split_once(':') {
            Some((r, sub)) => {
                args.push(r);
                args.push("--subresource");
                args.push(sub);
            }
            None => args.push(resource),
        }
        args.extend(["-n", ns, "--as", &sa]);
        let (_, out) = kubectl(cp, &args, None);
        out.trim() == "yes"
    };
    let expected = [
        ("get", "secrets", &team, true),
        ("list", "secrets", &team, false),
        ("watch", "secrets", &team, false),
        ("get", "secrets", &other, false),
        ("get", "secrets", &home, false),
        ("watch", "runnerpools.aci-runners.dev", &team, true),
        ("patch", "runnerpools.aci-runners.dev", &team, true),
        ("delete", "runnerpools.aci-runners.dev", &team, false),
        ("update", "runnerpools.aci-runners.dev", &team, false),
        ("list", "runnerpools.aci-runners.dev", &other, false),
        ("patch", "runnerpools.aci-runners.dev:status", &team, true),
        ("update", "runnerpools.aci-runners.dev:finalizers", &team, true),
        ("update", "runnerpools.aci-runners.dev:status", &team, false),
        ("patch", "runnerpools.aci-runners.dev:status", &other, false),
        ("create", "events.events.k8s.io", &team, true),
        ("create", "events", &team, true),
        ("create", "leases.coordination.k8s.io", &home, true),
        ("get", "leases.coordination.k8s.io/arc-aci-runner-controller", &home, true),
        ("get", "leases.coordination.k8s.io/someone-else", &home, false),
        ("create", "leases.coordination.k8s.io", &team, false),
        ("create", "pods", &home, false),
        ("list", "namespaces", &home, false),
    ];
    let mut wrong = Vec::new();
    for (verb, resource, ns, want) in expected {
        if can(verb, resource, ns) != want {
            wrong.push(format!("{verb} {resource} in {ns}: expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "RBAC is not least privilege:\n{}", wrong.join("\n"));

    let out = helm(&["uninstall", "arc", "--namespace", &home], Some(&cp.kubeconfig));
    assert!(out.status.success(), "helm uninstall failed:\n{}", text(&out));
    // Helm never deletes CRDs (that would delete every RunnerPool): the CRD stays.
    let (ok, out) = kubectl(cp, &["get", "crd", "runnerpools.aci-runners.dev"], None);
    assert!(ok, "{out}");
}
