//! The controller under the chart's own RBAC: the chart installed by Helm on the local control
//! plane (kube-apiserver v1.20.2) with `controller.watchNamespaces` = one namespace, then the
//! production binary run out of cluster exactly as the installed Deployment runs it (its `args`
//! and `env`), with a kubeconfig whose user impersonates the chart's ServiceAccount (`as:`), and
//! the simulators as Azure and GitHub (`--arm-endpoint`/`--azure-authority-host` replaced, a
//! client secret instead of workload identity, `--health-listen` on a free local port).
//!
//! Not proven here: the image, the pod's security context, workload identity, the NetworkPolicy.
use std::path::{Path, PathBuf};
use std::time::Duration;

use aci_runner_core::crd::RunnerPool;
use aci_runner_devkit::bench::procs::ControllerProc;
use aci_runner_devkit::testing::{control_plane, harness, tools, world};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::config::Kubeconfig;
use serde::Deserialize;
use serde_json::{Value, json};

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/aci-runner-controller")
}

struct Tools<'a> {
    cp: &'a control_plane::ControlPlane,
    helm_home: PathBuf,
}

impl Tools<'_> {
    fn ok(&self, program: &Path, args: &[&str]) -> String {
        let out = tools::run(program, args, &self.cp.kubeconfig, &self.helm_home, None).unwrap();
        assert!(out.status.success(), "{} {args:?} failed:\n{}", program.display(), tools::text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn yaml_docs(s: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(s)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The admin kubeconfig with every user impersonating `who` (what `kubectl --as` sends).
fn impersonating_kubeconfig(admin: &Path, who: &str, out: &Path) {
    let mut kc = Kubeconfig::read_from(admin).unwrap();
    for named in &mut kc.auth_infos {
        named.auth_info.as_mut().unwrap().impersonate = Some(who.to_string());
    }
    std::fs::write(out, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let written = std::fs::read_to_string(out).unwrap();
    assert!(written.contains(&format!("as: {who}")), "{written}");
}

/// The installed Deployment's container: its `args`, its `env` as the kubelet resolves it for a
/// pod named `pod` in `ns`, and the ServiceAccount it runs as.
fn deployment_container(
    manifest: &[Value],
    ns: &str,
    pod: &str,
) -> (Vec<String>, Vec<(String, String)>, String) {
    let deploy = manifest.iter().find(|d| d["kind"] == "Deployment").expect("the chart has a Deployment");
    let spec = &deploy["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let args = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let env = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match (&e["value"], e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                (Value::String(v), _) => v.clone(),
                (_, Some("metadata.namespace")) => ns.to_string(),
                (_, Some("metadata.name")) => pod.to_string(),
                _ => panic!("an env entry this test does not resolve: {e}"),
            };
            (name, value)
        })
        .collect();
    (args, env, spec["serviceAccountName"].as_str().unwrap().to_string())
}

/// The Deployment's `run` arguments pointed at the simulator: its endpoint flags (if any)
/// replaced, its health port moved to `health`, its tenant policy read from `policy` (the
/// chart's ConfigMap, written there); every other argument as the chart renders it.
fn pointed_at_simulator(
    args: &[String],
    sim: &aci_runner_devkit::sim::Simulator,
    health: &str,
    policy: &Path,
) -> Vec<String> {
    let replaced = ["--arm-endpoint=", "--azure-authority-host=", "--health-listen=", "--tenant-policy="];
    assert!(args.iter().any(|a| a.starts_with("--tenant-policy=/etc/aci-runner-controller/")), "{args:?}");
    let mut out: Vec<String> =
        args.iter().filter(|a| !replaced.iter().any(|r| a.starts_with(r))).cloned().collect();
    assert!(args.iter().any(|a| a.starts_with("--health-listen=")), "{args:?}");
    out.extend([
        format!("--arm-endpoint={}", sim.arm.url()),
        format!("--azure-authority-host={}", sim.arm.url()),
        "--arm-scope=https://management.azure.com/.default".to_string(),
        format!("--health-listen={health}"),
        format!("--tenant-policy={}", policy.display()),
    ]);
    out
}

/// Lines of the controller's log where the Kubernetes API refused it.
fn refusals(log: &Path) -> Vec<String> {
    let refused = regex::Regex::new(r"(?i)forbidden|[^0-9a-z.]403[^0-9a-z]").unwrap();
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| refused.is_match(l))
        .map(str::to_string)
        .collect()
}

/// A pool in the watched namespace becomes Ready, its usage priced from the chart's
/// `controller.prices`, and is deleted cleanly (finalizer), with the Lease, Events, status and
/// Secret reads of the chart's Role; a pool in an unwatched namespace
/// gets no finalizer, no status and no simulator call; the controller's log shows no refusal by
/// the API server. A second run as a ServiceAccount without bindings shows that the binary really
/// acts as the kubeconfig's `as:` identity and that a refusal does reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_as_the_charts_service_account_reconciles_its_namespace_only() {
    let cp = control_plane::shared();
    let admin = cp.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = Tools { cp, helm_home: dir.path().join("helm") };
    let home = control_plane::test_namespace(&admin, "rbac-home").await.unwrap();
    let watched = control_plane::test_namespace(&admin, "rbac-watched").await.unwrap();
    let unwatched = control_plane::test_namespace(&admin, "rbac-unwatched").await.unwrap();
    let release = format!("rbac-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let chart = chart();
    // Helm 4 applies server-side by default; servers before 1.25 reject the CRD's CEL rules in a
    // server-side apply (docs/helm.md).
    t.ok(
        tools::helm_bin(),
        &[
            "install",
            &release,
            chart.to_str().unwrap(),
            "--namespace",
            &home,
            "--server-side=false",
            "--set",
            &format!("controller.watchNamespaces={{{watched}}}"),
            "--set",
            "azure.workloadIdentity.clientId=11111111-2222-3333-4444-555555555555",
            // The price table that fills status.usage.estimatedCost (`--set` would pass the
            // decimals as strings, which the schema refuses).
            "--set",
            "controller.prices.currency=EUR",
            "--set-json",
            "controller.prices.vcpuSecond=0.001",
            "--set-json",
            "controller.prices.gbSecond=0.0001",
            // The watched namespace's pools may run as the controller's identity; the other's
            // may not (it is not watched either).
            "--set-json",
            &format!(
                r#"tenantPolicy={{"rules":[{{"namespaces":["{watched}"],"controllerIdentity":true}}]}}"#
            ),
        ],
    );
    t.ok(
        tools::kubectl_bin(),
        &["wait", "--for", "condition=established", "crd/runnerpools.aci-runners.dev", "--timeout=60s"],
    );
    let manifest = yaml_docs(&t.ok(tools::helm_bin(), &["get", "manifest", &release, "-n", &home]));
    let pod = format!("{release}-aci-runner-controller-0");
    let (args, env, sa_name) = deployment_container(&manifest, &home, &pod);
    assert_eq!(args[0], "run", "{args:?}");
    assert!(args.contains(&format!("--namespaces={watched}")), "{args:?}");
    let sa = format!("system:serviceaccount:{home}:{sa_name}");
    // The policy as the pod would read it: the chart's ConfigMap.
    let policy_map = manifest
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-tenant-policy"))
        })
        .expect("the chart renders the tenant policy ConfigMap");
    let policy = dir.path().join("tenant-policy.yaml");
    std::fs::write(&policy, policy_map["data"]["policy.yaml"].as_str().unwrap()).unwrap();

    let sim = aci_runner_devkit::sim::start(harness::fast_sim_options(31)).await.unwrap();
    for ns in [&watched, &unwatched] {
        harness::apply_app_secret(&admin, ns, "github-app", &sim).await.unwrap();
    }
    harness::apply_pool(&admin, &watched, &harness::pool_manifest("watched", &sim, json!({}))).await.unwrap();
    let elsewhere = json!({
        "github": {"organization": null, "repository": "octo-org/other-repo"},
        "azure": {"resourceGroup": "rg-unwatched"},
    });
    harness::apply_pool(&admin, &unwatched, &harness::pool_manifest("unwatched", &sim, elsewhere))
        .await
        .unwrap();

    let kubeconfig = dir.path().join("kubeconfig-sa");
    impersonating_kubeconfig(&cp.kubeconfig, &sa, &kubeconfig);
    let health = harness::free_addr().unwrap();
    let argv = pointed_at_simulator(&args, &sim, &health.to_string(), &policy);
    let mut ctl = ControllerProc::start_exact(
        &sim,
        &kubeconfig,
        &dir.path().join("controller"),
        argv.clone(),
        env.clone(),
        format!("http://{health}"),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            std::fs::read_to_string(dir.path().join("controller/controller.log")).unwrap_or_default()
        )
    });
    let log = ctl.log.clone();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let pools: Api<RunnerPool> = Api::namespaced(admin.clone(), &watched);
    let ready = harness::eventually(Duration::from_secs(180), || async {
        pools.get_opt("watched").await.ok().flatten().filter(|p| world::ready_with(p, 1))
    })
    .await;
    assert!(
        ready.is_some(),
        "the watched pool did not become Ready:\n{}\n{}",
        world::world(&sim, "watched"),
        log_text()
    );
    // The chart's price table reaches the binary: the pool's usage is priced.
    let priced = harness::eventually(Duration::from_secs(120), || async {
        let usage = pools.get_opt("watched").await.ok().flatten()?.status?.usage?;
        (usage.estimated_cost.is_some_and(|c| c > 0.0) && usage.vcpu_seconds > 0.0).then_some(usage)
    })
    .await
    .expect("status.usage.estimatedCost is filled");
    assert_eq!(priced.currency.as_deref(), Some("EUR"));
    let expected = priced.vcpu_seconds * 0.001 + priced.gb_seconds * 0.0001;
    assert!((priced.estimated_cost.unwrap() - expected).abs() < 1e-9, "{priced:?}");

    // Leader election: the Lease of the chart's name in the release namespace, held by the pod.
    let lease = Api::<Lease>::namespaced(admin.clone(), &home)
        .get(&format!("{release}-aci-runner-controller"))
        .await
        .unwrap();
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some(pod.as_str()));
    // Events in the watched namespace, by the controller.
    let events = Api::<Event>::namespaced(admin.clone(), &watched).list(&Default::default()).await.unwrap();
    assert!(
        events.items.iter().any(|e| e.involved_object.name.as_deref() == Some("watched")),
        "the controller's Events on the pool: {:?}",
        events.items.iter().map(|e| (&e.reason, &e.message)).collect::<Vec<_>>()
    );

    // Deleting the pool goes through the finalizer (patch, finalizers update) and removes its
    // container groups.
    pools.delete("watched", &Default::default()).await.unwrap();
    let gone = harness::eventually(Duration::from_secs(120), || async {
        matches!(pools.get_opt("watched").await, Ok(None)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the watched pool was not finalized:\n{}", log_text());
    assert!(harness::groups_of(&sim, "watched").is_empty(), "{}", world::world(&sim, "watched"));

    // The unwatched pool: untouched by the controller, never mentioned to the simulators.
    let other = Api::<RunnerPool>::namespaced(admin.clone(), &unwatched).get("unwatched").await.unwrap();
    assert!(other.metadata.finalizers.unwrap_or_default().is_empty(), "a finalizer on the unwatched pool");
    assert!(other.status.is_none(), "a status on the unwatched pool: {:?}", other.status);
    let arm_calls: Vec<String> = sim
        .arm
        .calls()
        .into_iter()
        .map(|c| c.path)
        .filter(|p| p.to_lowercase().contains("rg-unwatched"))
        .collect();
    assert!(arm_calls.is_empty(), "ARM calls for the unwatched pool: {arm_calls:?}");
    let gh_calls: Vec<String> =
        sim.github.calls().into_iter().map(|c| c.path).filter(|p| p.contains("other-repo")).collect();
    assert!(gh_calls.is_empty(), "GitHub calls for the unwatched pool: {gh_calls:?}");
    assert!(harness::groups_of(&sim, "unwatched").is_empty());
    assert!(!sim.arm.calls().is_empty() && !sim.github.calls().is_empty(), "the call logs are recorded");

    let refused = refusals(&log);
    assert!(refused.is_empty(), "the API server refused the controller:\n{}", refused.join("\n"));
    assert!(!ctl.exited(), "the controller exited:\n{}", log_text());
    ctl.stop().await;

    // The same binary and arguments as a ServiceAccount the chart did not bind: refused, and the
    // refusal is in its log (so the scan above would have caught one).
    let nobody = dir.path().join("kubeconfig-nobody");
    impersonating_kubeconfig(&cp.kubeconfig, &format!("system:serviceaccount:{home}:nobody"), &nobody);
    let health = harness::free_addr().unwrap();
    let argv = pointed_at_simulator(&args, &sim, &health.to_string(), &policy);
    let other_dir = dir.path().join("nobody");
    // It may exit (the Lease is refused) before or after it answers /healthz.
    let started =
        ControllerProc::start_exact(&sim, &nobody, &other_dir, argv, env, format!("http://{health}")).await;
    let refused = harness::eventually(Duration::from_secs(60), || async {
        let r = refusals(&other_dir.join("controller.log"));
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert!(
        refused.is_some(),
        "no refusal logged for an unbound ServiceAccount:\n{}",
        std::fs::read_to_string(other_dir.join("controller.log")).unwrap_or_default()
    );
    if let Ok(mut p) = started {
        p.stop().await;
    }

    t.ok(tools::helm_bin(), &["uninstall", &release, "--namespace", &home]);
}
