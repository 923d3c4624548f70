//! The Helm chart (`charts/aci-runner-controller`): lint, rendering, values schema, least-privilege
//! RBAC, and server-side dry runs plus a real install against the local kube-apiserver v1.20.2.
//!
//! Helm comes from `scripts/helm` (installed by `scripts/test`); these tests fail, never skip,
//! when it is missing.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use aci_runner_devkit::testing::control_plane;
use aci_runner_devkit::testing::tools::{helm_bin, kubectl_bin};
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

/// The chart refuses to install without `controller.watchNamespaces` unless every namespace is
/// opted into; renders that are about something else opt in (a `watchNamespaces` set after it
/// takes precedence).
const ALL_NAMESPACES: [&str; 2] = ["--set", "controller.watchAllNamespaces=true"];

/// `helm template` offline (helm's default capabilities) with extra arguments.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.to_str().unwrap(), "--namespace", "arc-system"];
    args.extend_from_slice(&ALL_NAMESPACES);
    args.extend_from_slice(extra);
    let out = helm(&args, None);
    assert!(out.status.success(), "helm template {extra:?} failed:\n{}", text(&out));
    yaml_docs(&String::from_utf8_lossy(&out.stdout))
}

fn render_err(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.to_str().unwrap()];
    args.extend_from_slice(&ALL_NAMESPACES);
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

/// The chart's CRD is a regular file (GitOps tools such as Flux's source-controller leave
/// symlinks out of their artifacts), byte-identical to the generated `crds/runnerpool.yaml` and to
/// what the binary's `crd` subcommand prints.
#[test]
fn chart_crd_is_the_generated_crd() {
    const REGENERATE: &str = "regenerate both: cargo run -- crd | tee crds/runnerpool.yaml > charts/aci-runner-controller/crds/runnerpool.yaml";
    let file = chart().join("crds/runnerpool.yaml");
    let meta = std::fs::symlink_metadata(&file).unwrap();
    assert!(
        meta.file_type().is_file(),
        "{} must be a regular file, not a symlink: {REGENERATE}",
        file.display()
    );
    let chart_crd = std::fs::read_to_string(&file).unwrap();
    let generated = aci_runner_core::crd::crd_yaml().unwrap();
    assert!(chart_crd == generated, "the chart's CRD differs from the generated CRD: {REGENERATE}");
    let top_level = std::fs::read_to_string(repo().join("crds/runnerpool.yaml")).unwrap();
    assert!(chart_crd == top_level, "the chart's CRD differs from crds/runnerpool.yaml: {REGENERATE}");
    let files: Vec<_> =
        std::fs::read_dir(chart().join("crds")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "unexpected files in the chart's crds/: {files:?}");
    // `helm package` puts the file's exact bytes into the chart archive.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().to_str().unwrap();
    let out = helm(&["package", chart().to_str().unwrap(), "--destination", dest], None);
    assert!(out.status.success(), "helm package failed:\n{}", text(&out));
    let tgz = dir.path().join("aci-runner-controller-0.1.0.tgz");
    let st = Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(dir.path()).status().unwrap();
    assert!(st.success(), "tar -xzf {}", tgz.display());
    let packaged = std::fs::read(dir.path().join("aci-runner-controller/crds/runnerpool.yaml")).unwrap();
    assert!(packaged == generated.as_bytes(), "the packaged chart's CRD differs from the generated CRD");
    assert!(!dir.path().join("aci-runner-controller/ci").exists(), "ci/ values must not be packaged");
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart_yaml = yaml_docs(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).remove(0);
    assert_eq!(
        chart_yaml["appVersion"].as_str().unwrap(),
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion (the default image tag) must follow Cargo.toml's version"
    );
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
fn without_watched_namespaces_the_chart_refuses_to_install() {
    let out = helm(&["template", "rel", chart().to_str().unwrap()], None);
    assert!(!out.status.success(), "bare defaults rendered:\n{}", text(&out));
    let t = text(&out);
    assert!(t.contains("controller.watchNamespaces") && t.contains("controller.watchAllNamespaces"), "{t}");
}

#[test]
fn the_network_policy_is_on_metrics_closed_and_imds_only_when_allowed() {
    let docs = render(&[]);
    let np = find(&docs, "NetworkPolicy", "rel-aci-runner-controller");
    // No peer list for /metrics: no ingress rule for it (only the node's probes reach the pod).
    assert_eq!(np["spec"]["ingress"], serde_json::json!(null), "{np:#}");
    let egress = np["spec"]["egress"].to_string();
    assert!(!egress.contains("169.254.169.254") && !egress.contains("\"port\":80"), "{egress}");
    let d = find(&docs, "Deployment", "rel-aci-runner-controller");
    assert!(args_of(d).contains(&"--allow-imds=false".to_string()));

    let prometheus = r#"networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring"#;
    let docs = render(&["--set", "azure.allowImds=true", "--set", prometheus]);
    let np = find(&docs, "NetworkPolicy", "rel-aci-runner-controller");
    assert_eq!(np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["name"], "monitoring");
    let imds = np["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["to"][0]["ipBlock"]["cidr"] == "169.254.169.254/32")
        .unwrap_or_else(|| panic!("no IMDS egress with azure.allowImds: {np:#}"));
    assert_eq!(imds["ports"][0]["port"], 80);
    let d = find(&docs, "Deployment", "rel-aci-runner-controller");
    assert!(args_of(d).contains(&"--allow-imds=true".to_string()));
}

/// The tenant policy: `tenantPolicy` is rendered into the ConfigMap the Deployment mounts at
/// the path of its `--tenant-policy`; a changed policy changes the pod template (the pods roll);
/// the default grants no namespace the controller's identity; a misspelled key is refused.
#[test]
fn the_tenant_policy_reaches_the_pod_and_a_change_rolls_it() {
    let policy = |docs: &[Value]| {
        let cm = find(docs, "ConfigMap", "rel-aci-runner-controller-tenant-policy");
        let text = cm["data"]["policy.yaml"].as_str().unwrap().to_string();
        aci_runner_core::policy::TenantPolicy::from_yaml(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let checksum = |docs: &[Value]| {
        let d = find(docs, "Deployment", "rel-aci-runner-controller");
        d["spec"]["template"]["metadata"]["annotations"]["checksum/tenant-policy"].clone()
    };
    let defaults = render(&[]);
    assert_eq!(policy(&defaults), aci_runner_core::policy::TenantPolicy::default());
    let granted = render(&[
        "--set-json",
        r#"tenantPolicy={"rules":[{"namespaces":["ci"],"controllerIdentity":true,"subscriptions":["00000000-0000-0000-0000-000000000001"],"githubOwners":["my-org"]}]}"#,
    ]);
    let p = policy(&granted);
    assert!(p.rule_for("ci").controller_identity && !p.rule_for("other").controller_identity);
    assert_eq!(p.rule_for("ci").github_owners, Some(vec!["my-org".to_string()]));
    assert_ne!(checksum(&defaults), checksum(&granted), "a changed policy must roll the pods");
    let d = find(&granted, "Deployment", "rel-aci-runner-controller");
    let pod = &d["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tenant-policy")
        .expect("the policy is mounted");
    assert_eq!(mount["mountPath"], "/etc/aci-runner-controller/tenant-policy");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "tenant-policy").unwrap();
    assert_eq!(volume["configMap"]["name"], "rel-aci-runner-controller-tenant-policy");
    let err =
        render_err(&["--set-json", r#"tenantPolicy={"rules":[{"namespaces":["ci"],"subscription":["x"]}]}"#]);
    assert!(err.contains("subscription"), "{err}");
}

/// Every namespace opted in (`controller.watchAllNamespaces`): the hardened defaults otherwise.
#[test]
fn defaults_render_a_hardened_two_replica_deployment() {
    let docs = render(&[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
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
            "--install-name=arc-system.rel",
            "--leader-election=true",
            "--lease-name=rel-aci-runner-controller",
            "--lease-namespace=arc-system",
            "--health-listen=0.0.0.0:8080",
            "--azure-cloud=public",
            "--log-format=json",
            "--allow-imds=false",
            "--tenant-policy=/etc/aci-runner-controller/tenant-policy/policy.yaml",
            "--aci-creates-per-5m=100",
            "--aci-creates-per-hour=300",
            "--github-writes-per-minute=80",
            "--github-writes-per-hour=500",
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
    // Cluster-wide: only reading RunnerPools (garbage collection must see every shard's pools),
    // and the kube-system namespace (the derived install id; its own test checks that role).
    let cluster_roles: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "ClusterRole" && d["metadata"]["name"] != "rel-aci-runner-controller-cluster-id"
        })
        .collect();
    assert_eq!(cluster_roles.len(), 1);
    let mut g: Vec<(String, String, String)> =
        grants(cluster_roles[0]).into_iter().map(|(g, r, v, _)| (g, r, v)).collect();
    g.sort();
    assert_eq!(
        g,
        ["get", "list", "watch"]
            .map(|v| ("aci-runners.dev".to_string(), "runnerpools".to_string(), v.to_string()))
            .to_vec()
    );
    let crb = find(&docs, "ClusterRoleBinding", "rel-aci-runner-controller-pool-reader");
    assert_eq!(crb["subjects"][0]["name"], "rel-aci-runner-controller");
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
        ("AciRunnerArmThrottling", "aci_runner_controller_azure_ratelimit_pauses_total"),
        ("AciRunnerReconcileErrors", "aci_runner_controller_reconcile_errors_total"),
    ] {
        let expr = by_alert(alert);
        assert!(expr.contains(metric), "{alert}: {expr}");
        // No job matcher: the metric names are unique to this controller, whatever scrapes them.
        assert!(!expr.contains("job="), "{alert}: {expr}");
    }
    // Every expression (including the maximal values' additional rule) is valid PromQL.
    let max = render(&["-f", max_values().to_str().unwrap()]);
    let max_rules = find(&max, "PrometheusRule", "arc-max")["spec"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(max_rules.len(), 6);
    for r in rules.iter().chain(max_rules) {
        let expr = r["expr"].as_str().unwrap();
        if let Err(e) = promql_parser::parser::parse(expr) {
            panic!("{}: invalid PromQL {expr:?}: {e}", r["alert"]);
        }
    }
    for r in rules {
        for key in ["summary", "description"] {
            assert!(r["annotations"][key].is_string(), "{} lacks {key}", r["alert"]);
        }
    }
    assert!(promql_parser::parser::parse("sum by (pool (x)").is_err(), "the parser rejects bad PromQL");
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
    let mut child = Command::new(kubectl_bin())
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs (the machine's, or the one installed by `scripts/helm version`)");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out))
}

/// A minimal stand-in for a Prometheus Operator CRD (absent on the local control plane), so
/// the ServiceMonitor and PrometheusRule of the maximal values are checked by the server too.
fn monitoring_crd(kind: &str) -> String {
    let singular = kind.to_lowercase();
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {singular}s.monitoring.coreos.com}}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {{kind: {kind}, listKind: {kind}List, plural: {singular}s, singular: {singular}}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"#
    )
}

fn ensure_namespace(cp: &control_plane::ControlPlane, ns: &str) {
    let (ok, out) = kubectl(cp, &["create", "namespace", ns], None);
    assert!(ok || out.contains("AlreadyExists"), "{out}");
}

fn setup_monitoring_crds(cp: &control_plane::ControlPlane) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = [monitoring_crd("ServiceMonitor"), monitoring_crd("PrometheusRule")].join("---\n");
        let (ok, out) = kubectl(cp, &["apply", "-f", "-"], Some(crds.as_bytes()));
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
    args.extend_from_slice(&ALL_NAMESPACES);
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
        ("list", "runnerpools.aci-runners.dev", &other, true),
        ("watch", "runnerpools.aci-runners.dev", &other, true),
        ("patch", "runnerpools.aci-runners.dev", &other, false),
        ("update", "runnerpools.aci-runners.dev:finalizers", &other, false),
        ("create", "events", &other, false),
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

// ---- the examples in sub-folders (GitOps, webhook autoscaling, custom runner image) ----

/// Every YAML file under `examples/<sub-folder>/` (the top-level ones are tested by tests/crd.rs).
fn subfolder_yaml_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn example_docs() -> Vec<(PathBuf, Value)> {
    subfolder_yaml_files()
        .into_iter()
        .flat_map(|f| {
            let docs = yaml_docs(&std::fs::read_to_string(&f).unwrap());
            docs.into_iter().map(move |d| (f.clone(), d))
        })
        .collect()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

#[test]
fn subfolder_examples_apply_on_the_local_control_plane() {
    let cp = control_plane::shared();
    let (ok, out) =
        kubectl(cp, &["apply", "--validate=false", "-f", repo().join("crds").to_str().unwrap()], None);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        cp,
        &["wait", "--for", "condition=established", "crd/runnerpools.aci-runners.dev", "--timeout=30s"],
        None,
    );
    assert!(ok, "{out}");
    let ns = format!("arc-examples-{}", std::process::id());
    ensure_namespace(cp, &ns);
    let mut pools = 0;
    for (file, doc) in example_docs() {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "RunnerPool" && kind != "Secret" {
            continue;
        }
        // Kustomize sets the namespace of the GitOps pools; here every object goes to one namespace.
        let mut doc = doc.clone();
        doc["metadata"].as_object_mut().unwrap().remove("namespace");
        let (ok, out) = kubectl(
            cp,
            &["apply", "-n", &ns, "-f", "-"],
            Some(serde_json::to_string(&doc).unwrap().as_bytes()),
        );
        assert!(ok, "{} ({kind} {}) rejected: {out}", rel(&file), doc["metadata"]["name"]);
        if kind == "RunnerPool" {
            pools += 1;
            let spec: aci_runner_core::crd::RunnerPoolSpec =
                serde_json::from_value(doc["spec"].clone()).unwrap();
            spec.validate().unwrap_or_else(|e| panic!("{}: {e}", rel(&file)));
        }
    }
    assert!(pools >= 5, "expected the webhook, runner-image, ACR, Flux and Argo CD pools, found {pools}");
    // The kustomize directories build, and the pool directories apply as a whole (their
    // namespace ci-runners comes from the controller's side: examples/flux/controller, and
    // examples/argocd/runner-pools/namespace.yaml in an earlier sync wave).
    ensure_namespace(cp, "ci-runners");
    for dir in ["examples/flux/controller", "examples/flux/runner-pools"] {
        let (ok, built) = kubectl(cp, &["kustomize", repo().join(dir).to_str().unwrap()], None);
        assert!(ok, "kubectl kustomize {dir}: {built}");
        if dir.ends_with("runner-pools") {
            let (ok, out) = kubectl(cp, &["apply", "-f", "-"], Some(built.as_bytes()));
            assert!(ok, "{dir} rejected: {out}");
        }
    }
    // The Argo CD pool directory has no kustomization: `kubectl apply -f DIR` must work on it.
    let (ok, out) =
        kubectl(cp, &["apply", "-f", repo().join("examples/argocd/runner-pools").to_str().unwrap()], None);
    assert!(ok, "{out}");
}

/// Helm's value coalescing: user values deep-merged over the chart's defaults.
fn merged_with_defaults(user: &Value) -> Value {
    fn merge(base: &mut Value, over: &Value) {
        match (base, over) {
            (Value::Object(b), Value::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (b, o) => *b = o.clone(),
        }
    }
    let mut defaults = yaml_docs(&std::fs::read_to_string(chart().join("values.yaml")).unwrap()).remove(0);
    merge(&mut defaults, user);
    defaults
}

fn values_schema() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// Render the chart with `values` (a JSON object) written to a temporary values file.
fn render_with(values: &Value) -> Vec<Value> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), serde_json::to_string(values).unwrap()).unwrap();
    render(&["-f", f.path().to_str().unwrap()])
}

#[test]
fn gitops_examples_reference_the_chart_with_valid_values() {
    let schema = values_schema();
    let mut checked = Vec::new();
    for (file, doc) in example_docs() {
        let values = match doc["kind"].as_str() {
            Some("HelmRelease") => {
                let chart_path = doc["spec"]["chart"]["spec"]["chart"].as_str().unwrap();
                assert!(repo().join(chart_path).join("Chart.yaml").exists(), "{}: {chart_path}", rel(&file));
                assert_eq!(doc["spec"]["install"]["crds"], "CreateReplace", "{}", rel(&file));
                doc["spec"]["values"].clone()
            }
            Some("Application") => {
                // `spec.sources` (several, e.g. the chart and the pools) or `spec.source`.
                let sources = match doc["spec"]["sources"].as_array() {
                    Some(s) => s.clone(),
                    None => vec![doc["spec"]["source"].clone()],
                };
                let mut values = Value::Null;
                for source in &sources {
                    let path = source["path"].as_str().unwrap();
                    assert!(repo().join(path).is_dir(), "{}: path {path} does not exist", rel(&file));
                    if !source["helm"]["valuesObject"].is_null() {
                        values = source["helm"]["valuesObject"].clone();
                    }
                }
                match values {
                    Value::Null => continue,
                    v => v,
                }
            }
            Some("GitRepository") => {
                // The artifact must hold the chart (its CRD is a regular file) and the Flux example.
                let ignore = doc["spec"]["ignore"].as_str().unwrap_or_default();
                for keep in ["!/charts/", "!/examples/flux/"] {
                    assert!(ignore.lines().any(|l| l.trim() == keep), "{}: ignore lacks {keep}", rel(&file));
                }
                continue;
            }
            Some("Kustomization") if doc["apiVersion"].as_str().unwrap().starts_with("kustomize.toolkit") => {
                let path = doc["spec"]["path"].as_str().unwrap();
                assert!(repo().join(path).join("kustomization.yaml").exists(), "{}: {path}", rel(&file));
                continue;
            }
            _ => continue,
        };
        let merged = merged_with_defaults(&values);
        let errors: Vec<String> = schema.iter_errors(&merged).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: values do not match values.schema.json: {errors:?}", rel(&file));
        assert!(!render_with(&values).is_empty());
        checked.push(rel(&file));
    }
    // The plain Helm values file of the webhook example.
    let f = repo().join("examples/webhook-autoscaling/values.yaml");
    let values = yaml_docs(&std::fs::read_to_string(&f).unwrap()).remove(0);
    let errors: Vec<String> =
        schema.iter_errors(&merged_with_defaults(&values)).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{}: {errors:?}", rel(&f));
    // The schema check is real: a typo in the same file is caught.
    let mut typo = values.clone();
    typo["webhook"]["ingres"] = serde_json::json!({"enabled": true});
    assert!(schema.iter_errors(&merged_with_defaults(&typo)).next().is_some(), "typo not caught");
    let docs = render_with(&values);
    assert!(docs.iter().any(|d| d["kind"] == "Ingress"), "the webhook example exposes the receiver");
    checked.push(rel(&f));
    assert_eq!(
        checked.len(),
        3,
        "expected the Flux HelmRelease, the Argo CD Application and the webhook values: {checked:?}"
    );
}

fn argocd_health(lua_src: &str, obj: &Value) -> (String, String) {
    use mlua::LuaSerdeExt;
    let lua = mlua::Lua::new();
    lua.globals().set("obj", lua.to_value(obj).unwrap()).unwrap();
    let hs: mlua::Table = lua.load(lua_src).eval().unwrap();
    (hs.get::<String>("status").unwrap(), hs.get::<String>("message").unwrap())
}

fn pool_with(generation: i64, observed: Option<i64>, conditions: Value) -> Value {
    let mut status = serde_json::json!({ "conditions": conditions });
    if let Some(o) = observed {
        status["observedGeneration"] = o.into();
    }
    serde_json::json!({
        "apiVersion": "aci-runners.dev/v1alpha1", "kind": "RunnerPool",
        "metadata": {"name": "p", "generation": generation},
        "status": status
    })
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message})
}

#[test]
fn argocd_health_check_classifies_runner_pools() {
    let dir = repo().join("examples/argocd");
    let lua_src = std::fs::read_to_string(dir.join("runnerpool-health.lua")).unwrap();
    let cm = yaml_docs(&std::fs::read_to_string(dir.join("argocd-cm-health.yaml")).unwrap()).remove(0);
    assert_eq!(
        cm["data"]["resource.customizations.health.aci-runners.dev_RunnerPool"].as_str().unwrap(),
        lua_src,
        "argocd-cm-health.yaml must embed runnerpool-health.lua verbatim"
    );
    // The statuses, reasons and messages of Ready, Reconciling and Stalled → Argo CD health, and
    // which of the three conditions (0, 1, 2) the health message quotes as "reason: message".
    let (ready, missing) = ("2 idle, 0 busy of 2 desired", "Secret github-app not found");
    let (creating, steady) = ("creating 2 runners", "1 idle, 2 busy, 1 provisioning of 4 desired");
    let cases = [
        (["True", "False", "False"], ["RunnersReady"; 3], [ready, "", ""], "Healthy", 0),
        (["False", "False", "True"], ["SecretNotFound"; 3], [missing, "", missing], "Degraded", 2),
        (["False", "True", "False"], ["ScalingUp"; 3], ["1 of 3", creating, ""], "Progressing", 1),
        (["False"; 3], ["Recycling", "SteadyState", "NotStalled"], [steady, steady, ""], "Healthy", 1),
    ];
    for (statuses, reasons, messages, health, quoted) in cases {
        let conds: Vec<_> = (0..3).map(|i| (statuses[i], reasons[i], messages[i])).collect();
        let conditions: Vec<Value> = ["Ready", "Reconciling", "Stalled"]
            .iter()
            .zip(&conds)
            .map(|(t, (status, reason, msg))| cond(t, status, reason, msg))
            .collect();
        let message = format!("{}: {}", reasons[quoted], messages[quoted]);
        let pool = pool_with(3, Some(3), Value::Array(conditions));
        assert_eq!(argocd_health(&lua_src, &pool), (health.into(), message), "{conds:?}");
    }
    // A Ready status written for an older spec is not trusted.
    let stale = pool_with(4, Some(3), serde_json::json!([cond("Ready", "True", "RunnersReady", "ok")]));
    let (status, message) = argocd_health(&lua_src, &stale);
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 4"), "{message}");
    let fresh = serde_json::json!({"apiVersion": "aci-runners.dev/v1alpha1", "kind": "RunnerPool", "metadata": {"name": "p", "generation": 1}});
    assert_eq!(argocd_health(&lua_src, &fresh).0, "Progressing");
}

#[test]
fn runner_image_entrypoint_registers_from_the_runner_variables() {
    let script = repo().join("examples/runner-image/entrypoint.sh");
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("calls.log");
    // Stand-ins for the runner's config.sh and run.sh that record how they were called.
    let stub = |name: &str, body: &str| {
        let p = home.path().join(name);
        std::fs::write(&p, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    stub(
        "config.sh",
        &format!(
            r#"{{ echo "config: $*"; echo "config input token: ${{ACTIONS_RUNNER_INPUT_TOKEN:-}}"; echo "config env token: ${{RUNNER_TOKEN:-}}"; }} >> {}"#,
            log.display()
        ),
    );
    stub(
        "run.sh",
        &format!(
            r#"{{ echo "run: $*"; echo "run tokens: ${{RUNNER_TOKEN:-}}${{ACTIONS_RUNNER_INPUT_TOKEN:-}}"; }} >> {}"#,
            log.display()
        ),
    );
    let run = |env: &[(&str, &str)]| -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("RUNNER_HOME", home.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let base = [
        ("RUNNER_URL", "https://github.com/example-org"),
        ("RUNNER_NAME", "custom-image-x7k2q"),
        ("RUNNER_LABELS", "aci-custom-image,linux-x64"),
        ("RUNNER_GROUP", "custom"),
        ("RUNNER_WORKDIR", "_work"),
        ("RUNNER_EPHEMERAL", "true"),
        ("RUNNER_TOKEN", "AABBCCSECRETTOKEN"),
    ];
    let out = run(&base);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("AABBCCSECRETTOKEN"), "the token was printed: {}", text(&out));
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(
            "config: --unattended --replace --url https://github.com/example-org --name custom-image-x7k2q \
             --work _work --labels aci-custom-image,linux-x64 --runnergroup custom --ephemeral\n"
        ),
        "{calls}"
    );
    assert!(calls.contains("config input token: AABBCCSECRETTOKEN\n"), "{calls}");
    assert!(calls.contains("config env token: \n"), "RUNNER_TOKEN must be unset before config.sh: {calls}");
    assert!(calls.contains("run: \nrun tokens: \n"), "run.sh must not inherit the token: {calls}");

    // Non-ephemeral, no group: no --ephemeral, no --runnergroup.
    std::fs::remove_file(&log).unwrap();
    let mut env = base.to_vec();
    env.retain(|(k, _)| *k != "RUNNER_GROUP");
    env.iter_mut().for_each(|(k, v)| {
        if *k == "RUNNER_EPHEMERAL" {
            *v = "false";
        }
    });
    let out = run(&env);
    assert!(out.status.success(), "{}", text(&out));
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(!calls.contains("--ephemeral") && !calls.contains("--runnergroup"), "{calls}");

    // Missing or malformed variables: exit 64 with a message, config.sh never called.
    std::fs::remove_file(&log).unwrap();
    for (drop, set, expect) in [
        ("RUNNER_TOKEN", None, "RUNNER_TOKEN is not set"),
        ("RUNNER_URL", None, "RUNNER_URL is not set"),
        ("RUNNER_NAME", None, "RUNNER_NAME is not set"),
        ("", Some(("RUNNER_EPHEMERAL", "yes")), "RUNNER_EPHEMERAL must be true or false"),
    ] {
        let mut env: Vec<(&str, &str)> = base.iter().copied().filter(|(k, _)| *k != drop).collect();
        if let Some((k, v)) = set {
            env.retain(|(x, _)| *x != k);
            env.push((k, v));
        }
        let out = run(&env);
        assert_eq!(out.status.code(), Some(64), "{expect}: {}", text(&out));
        assert!(text(&out).contains(expect), "{}", text(&out));
    }
    assert!(!log.exists(), "config.sh ran despite invalid input");
}

// ---- the chart's arguments against the controller's real command line ----

/// `aci-runner-controller [--log-format F] run ARGS`: the binary's global flag plus `run`'s flags.
#[derive(clap::Parser, Debug)]
struct CliUnderTest {
    #[arg(long, global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: RunOnly,
}

#[derive(clap::Subcommand, Debug)]
enum RunOnly {
    Run(aci_runner_controller::controller::run::RunArgs),
}

fn parse_chart_args(
    docs: &[Value],
    deployment: &str,
) -> (Option<String>, aci_runner_controller::controller::run::RunArgs) {
    use clap::Parser;
    let args = args_of(find(docs, "Deployment", deployment));
    let argv = std::iter::once("aci-runner-controller".to_string()).chain(args.iter().cloned());
    match CliUnderTest::try_parse_from(argv) {
        Ok(CliUnderTest { log_format, command: RunOnly::Run(run) }) => (log_format, run),
        Err(e) => panic!("the controller rejects the chart's arguments {args:?}:\n{e}"),
    }
}

/// Per-App webhook secrets: a Secret with a key per App id, mounted as a directory and passed as
/// `--webhook-secrets-dir`; with it alone the shared secret is not required.
#[test]
fn per_app_webhook_secrets_are_mounted_as_a_directory() {
    let docs =
        render(&["--set", "webhook.enabled=true", "--set", "webhook.appSecrets.existingSecret=hook-apps"]);
    let (_, run) = parse_chart_args(&docs, "rel-aci-runner-controller");
    assert_eq!(run.webhook_secrets_dir.as_deref(), Some(Path::new("/var/run/secrets/github-webhook-apps")));
    assert!(run.webhook_secret_file.is_none());
    let d = find(&docs, "Deployment", "rel-aci-runner-controller");
    let pod = &d["spec"]["template"]["spec"];
    let vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "github-webhook-apps").unwrap();
    assert_eq!(vol["secret"]["secretName"], "hook-apps");
    // Owner-read only (YAML 1.1 octal, as on the shared secret's volume).
    let mode = &vol["secret"]["defaultMode"];
    assert!(mode.as_str() == Some("0400") || mode.as_u64() == Some(0o400), "{mode}");
    assert!(pod["volumes"].as_array().unwrap().iter().all(|v| v["name"] != "github-webhook"));
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == "github-webhook-apps" && m["readOnly"] == true), "{mounts:?}");
    // Both together: the shared secret for every other App.
    let docs = render(&[
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.appSecrets.existingSecret=hook-apps",
        "--set",
        "webhook.secret.existingSecret=hook",
    ]);
    let (_, run) = parse_chart_args(&docs, "rel-aci-runner-controller");
    assert!(run.webhook_secrets_dir.is_some() && run.webhook_secret_file.is_some());
}

#[test]
fn chart_arguments_parse_with_the_controller_cli() {
    let (log_format, run) = parse_chart_args(&render(&[]), "rel-aci-runner-controller");
    assert_eq!(log_format.as_deref(), Some("json"));
    assert!(run.namespaces.is_empty() && run.selector.is_none());
    assert_eq!(run.resync_interval, std::time::Duration::from_secs(60));
    assert!(run.leader.leader_election);
    assert_eq!(run.leader.lease_name, "rel-aci-runner-controller");
    assert_eq!(run.leader.lease_namespace.as_deref(), Some("arc-system"));
    assert_eq!(run.health_listen.to_string(), "0.0.0.0:8080");
    assert!(run.webhook_listen.is_none() && run.webhook_secret_file.is_none());
    // Public Azure's endpoints come from the cloud (`controller.azureCloud`), not from flags.
    assert_eq!((run.arm_endpoint.as_deref(), run.azure_authority_host.as_deref()), (None, None));
    let cloud = run.cloud().unwrap();
    assert_eq!(cloud.arm_endpoint.as_str(), "https://management.azure.com/");
    assert_eq!(cloud.authority_host.as_str(), "https://login.microsoftonline.com/");
    assert_eq!(run.prices.table().unwrap(), None, "no price table by default");
    assert_eq!(
        run.limits,
        aci_runner_controller::controller::run::ApiLimitArgs::default(),
        "documented quotas"
    );

    let (_, run) = parse_chart_args(&render(&["-f", max_values().to_str().unwrap()]), "arc-max");
    assert_eq!(run.namespaces, ["ci-runners-a", "ci-runners-b"]);
    assert_eq!(run.selector.as_deref(), Some("shard=a"));
    assert_eq!(run.resync_interval, std::time::Duration::from_secs(120));
    assert_eq!(run.leader.lease_name, "arc-max-leader");
    assert_eq!(run.gc_grace, std::time::Duration::from_secs(300), "controller.extraArgs are passed");
    let limits = &run.limits;
    assert_eq!((limits.aci_creates_per_5m, limits.aci_creates_per_hour), (1000, 3000), "raised ACI quotas");
    assert_eq!((limits.github_writes_per_minute, limits.github_writes_per_hour), (0, 0), "GHES: unpaced");
    assert_eq!(limits.arm_write_burst, 400.0);
    assert_eq!(run.health_listen.to_string(), "0.0.0.0:9090");
    assert_eq!(run.webhook_listen.map(|a| a.to_string()).as_deref(), Some("0.0.0.0:8443"));
    assert_eq!(run.webhook_secret_file.as_deref(), Some(Path::new("/var/run/secrets/github-webhook/secret")));
    let cloud = run.cloud().unwrap();
    assert_eq!(cloud.arm_endpoint.as_str(), "https://management.usgovcloudapi.net/");
    assert_eq!(cloud.authority_host.as_str(), "https://login.microsoftonline.us/");
    let prices = run.prices.table().unwrap().expect("controller.prices fill the price table");
    assert_eq!(prices.currency, "USD");
    assert_eq!((prices.regular_vcpu_second, prices.regular_gb_second), (0.0000135, 0.0000015));
    assert_eq!((prices.spot_vcpu_second, prices.spot_gb_second), (0.000004, 0.00000045));

    let (_, run) = parse_chart_args(
        &render(&["--set", "replicaCount=1", "--set", "controller.leaderElection.enabled=false"]),
        "rel-aci-runner-controller",
    );
    assert!(!run.leader.leader_election);
}

#[test]
fn the_install_id_is_derived_from_the_release_and_cluster_unless_set() {
    // Derived: the release's namespace and name, plus `get` on kube-system only.
    let docs = render(&[]);
    let (_, run) = parse_chart_args(&docs, "rel-aci-runner-controller");
    assert_eq!((run.install_id.as_deref(), run.install_name.as_str()), (None, "arc-system.rel"));
    let role = find(&docs, "ClusterRole", "rel-aci-runner-controller-cluster-id");
    assert_eq!(
        grants(role),
        vec![(String::new(), "namespaces".into(), "get".into(), vec!["kube-system".into()])]
    );
    find(&docs, "ClusterRoleBinding", "rel-aci-runner-controller-cluster-id");
    // Set: passed as is, and no cluster-scoped namespace read.
    let docs = render(&["--set", "controller.installId=prod-eu.1"]);
    let (_, run) = parse_chart_args(&docs, "rel-aci-runner-controller");
    assert_eq!(run.install_id.as_deref(), Some("prod-eu.1"));
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "rel-aci-runner-controller-cluster-id"));
    // The schema takes only what the controller takes.
    for bad in ["Prod", "-x", "x.", &"a".repeat(64)] {
        let err = render_err(&["--set", &format!("controller.installId={bad}")]);
        assert!(err.contains("installId"), "{bad}: {err}");
    }
}
