//! The reconciler end to end: a real kube-apiserver (scripts/control-plane), the simulated Azure
//! and GitHub, and the controller (`run_with`, production edges) in this process.
use std::time::Duration;

use aci_runner_devkit::testing::control_plane;
use aci_runner_devkit::testing::harness::{condition, eventually};
use aci_runner_devkit::testing::world::World;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_two_becomes_ready_with_two_online_runners_and_columns() {
    let mut w = World::start("e2e-ready", 1).await;
    let (sim, ns) = (w.sim.clone(), w.ns.clone());
    w.apply("ready", json!({"scaling": {"minIdle": 2}})).await;

    let ready = eventually(T, || async {
        let p = w.get_pool("ready").await?;
        (condition(&p, "Ready").map(|c| c.0) == Some("True".into())).then_some(p)
    })
    .await;
    let groups = w.groups_of("ready");
    let runners = w.runners_of("ready");
    let Some(pool) = ready else {
        let p = w.get_pool("ready").await.map(|p| p.status);
        panic!("never Ready; status {p:?}; groups {groups:?}; runners {runners:?}");
    };
    let status = pool.status.clone().unwrap();
    assert_eq!((status.desired, status.idle, status.busy), (2, 2, 0), "{status:?}");
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(runners.iter().filter(|r| r.online).count(), 2, "{runners:?}");
    for g in &groups {
        // One group per runner, named after it; the JIT config is the only secret and it is secure.
        assert!(runners.iter().any(|r| r.name == g.name), "group {} has no registration", g.name);
        let env = sim.arm.env_names(&g.name);
        assert!(env.iter().any(|(_, n, secure)| n == "ACTIONS_RUNNER_INPUT_JITCONFIG" && *secure), "{env:?}");
    }
    assert_eq!(condition(&pool, "Stalled").map(|c| c.0).as_deref(), Some("False"));
    assert_eq!(status.observed_generation, pool.metadata.generation);

    // kubectl get rp shows the printer columns with these numbers.
    let cp = control_plane::shared();
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &cp.kubeconfig)
        .args(["get", "rp", "-n", &ns, "--no-headers", "-o", "wide"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cols: Vec<&str> = text.split_whitespace().collect();
    // NAME SCOPE IDLE BUSY DESIRED READY AGE
    assert_eq!(&cols[..6], &["ready", "org/octo-org", "2", "0", "2", "True"], "{text}");

    // Metrics: runners by state for this pool.
    let m = w.metrics().await;
    assert!(
        m.lines().any(|l| l.starts_with("aci_runner_controller_runners{")
            && l.contains(&format!("namespace=\"{ns}\""))
            && l.contains("state=\"idle\"")
            && l.ends_with(" 2")),
        "{m}"
    );
    w.stop().await;
}

/// Flux's kstatus reads a RunnerPool without conditions, or with an older `observedGeneration`,
/// as done. A new pool and a changed spec are acknowledged (observedGeneration, Reconciling
/// True/NewGeneration) before the controller's list of Azure is answered: a 15 s latency on the
/// simulated ARM list holds that list back, and the simulator's call log (which records a call
/// when it is answered) shows that none was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_is_acknowledged_before_azure_answers() {
    use aci_runner_devkit::sim::arm::{FaultConfig, OpFaults};
    let w = World::start("e2e-ack", 3).await;
    let slow = |ms| FaultConfig {
        ops: [("list".to_string(), OpFaults { latency_ms: ms, ..OpFaults::default() })].into(),
        ..FaultConfig::default()
    };
    let lists = || w.sim.arm.calls().into_iter().filter(|c| c.op == "list").count();
    let acknowledged = |generation: i64| {
        move |p: &aci_runner_core::crd::RunnerPool| {
            p.status.as_ref().and_then(|s| s.observed_generation) == Some(generation)
                && condition(p, "Reconciling") == Some(("True".into(), "NewGeneration".into()))
                && condition(p, "Stalled").map(|c| c.0) == Some("False".into())
        }
    };

    w.sim.arm.set_faults(slow(15_000));
    let answered_before = lists();
    w.apply("ack", json!({"scaling": {"minIdle": 1}})).await;
    w.wait_pool("ack", "acknowledged at generation 1", T, acknowledged(1)).await;
    assert_eq!(lists(), answered_before, "an ARM list was answered before the acknowledgement");

    w.sim.arm.set_faults(FaultConfig::default());
    let ready = w.wait_ready("ack", 1).await;
    assert_eq!(condition(&ready, "Reconciling"), Some(("False".into(), "Converged".into())));

    // A spec change (its pass may use a cached list, so no latency holds it): the API server's
    // watch of the pool, from before the change, shows every status written; the first of
    // generation 2 is the acknowledgement.
    let api: kube::Api<aci_runner_core::crd::RunnerPool> = kube::Api::namespaced(w.client.clone(), &w.ns);
    let from = ready.metadata.resource_version.clone().unwrap();
    let mut changes = api
        .watch(&kube::api::WatchParams::default().fields("metadata.name=ack").timeout(120), &from)
        .await
        .unwrap()
        .boxed();
    w.apply("ack", json!({"scaling": {"minIdle": 2}})).await;
    let first_of_generation_2 = tokio::time::timeout(T, async {
        while let Some(ev) = changes.try_next().await.unwrap() {
            if let kube::api::WatchEvent::Modified(p) = ev
                && p.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
            {
                return p;
            }
        }
        panic!("the watch ended before a status of generation 2");
    })
    .await
    .expect("no status of generation 2 within the timeout");
    assert!(acknowledged(2)(&first_of_generation_2), "{:?}", first_of_generation_2.status);
    w.wait_ready("ack", 2).await;
}

/// The `aci_runner_controller_*` names that docs/, README.md, the chart's README and its
/// PrometheusRule template use.
fn documented_metric_names() -> std::collections::BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("README.md"),
        root.join("charts/aci-runner-controller/README.md"),
        root.join("charts/aci-runner-controller/templates/prometheusrule.yaml"),
    ];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let name = regex::Regex::new(r"aci_runner_controller_[a-z0-9_]*[a-z0-9]").unwrap();
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            name.find_iter(&text).map(|m| m.as_str().to_string()).collect::<Vec<_>>()
        })
        .collect()
}

/// The sample names a Prometheus exposition can carry, from its `# TYPE` lines (whether or not
/// a series has a sample yet): a counter `X` as `X_total`, a histogram as `X`, `X_bucket`,
/// `X_sum`, `X_count`, anything else as `X`.
fn exported_metric_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for l in exposition.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                out.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
            "histogram" => {
                for suffix in ["", "_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// Every metric name the docs and the chart name is one the running controller exports on
/// `/metrics` (and every exported one is documented), and the documented webhook counter counts the deliveries the receiver accepts
/// (the series the docs named was once registered while another one was counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_metric_names_are_exported_and_webhook_deliveries_counted() {
    let w = World::builder("e2e-metric-names").webhooks("metric-names-secret").start().await;
    w.apply_ready("names", 1).await;
    w.enqueue(&["aci"], 0.5, 1);
    let counted = eventually(T, || async {
        let received = w
            .metric("aci_runner_controller_github_webhook_deliveries_total", &[("result", "accepted")])
            .await;
        let stored =
            w.metric("aci_runner_controller_webhook_deliveries_total", &[("result", "stored")]).await;
        (received >= 1.0 && stored >= 1.0).then_some(received)
    })
    .await;
    assert!(counted.is_some(), "no accepted delivery counted:\n{}", w.metrics().await);

    let exposition = w.metrics().await;
    let exported = exported_metric_names(&exposition);
    let documented = documented_metric_names();
    assert!(documented.len() >= 15, "the docs' metric names were not found: {documented:?}");
    let missing: Vec<&String> = documented.difference(&exported).collect();
    assert!(missing.is_empty(), "documented but not exported: {missing:?}\n{exposition}");
    // And the other way round: no exported series the docs do not name.
    let undocumented: Vec<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split_once(' '))
        .map(|(n, kind)| if kind == "counter" { format!("{n}_total") } else { n.to_string() })
        .filter(|n| !documented.contains(n))
        .collect();
    assert!(undocumented.is_empty(), "exported but not in docs/operations.md: {undocumented:?}");
    // The rule that reads the exposition tells the kinds apart.
    assert!(exported.contains("aci_runner_controller_reconcile_total"));
    assert!(exported.contains("aci_runner_controller_reconcile_duration_seconds_bucket"));
    assert!(!exported.contains("aci_runner_controller_runners_total"), "runners is a gauge");
}

/// The default image pins a runner version, and GitHub publishes when it stops accepting each
/// version. A pool whose version ends within 30 days gets one Warning `RunnerVersionDeprecated`
/// naming the version, the date and the field to change, while it keeps running; the lookup is
/// cached (one call to GitHub for several passes of the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_runner_version_ends_soon_is_warned_once() {
    let version = aci_runner_core::plan::names::runner_version_of(aci_runner_core::crd::DEFAULT_RUNNER_IMAGE)
        .expect("the default image pins a version");
    let ends = chrono::Utc::now() + chrono::Duration::days(10);
    let mut opts = aci_runner_devkit::testing::harness::fast_sim_options(84);
    opts.github.deprecated_runner_versions = [(version.to_string(), ends)].into_iter().collect();
    let mut w = World::builder("e2e-deprecated").sim_options(opts).start().await;
    w.apply_ready("old", 1).await;
    w.expect_event("old", "RunnerVersionDeprecated", version).await;
    // Several more passes (resync 1-2 s in the harness), still one Warning and one lookup.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warnings: Vec<_> =
        w.warnings_of("old").await.into_iter().filter(|(_, r, _)| r == "RunnerVersionDeprecated").collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].2.contains("spec.runner.image"), "{warnings:?}");
    let lookups = w.sim.github.calls().iter().filter(|c| c.op == "runner_deprecation").count();
    assert_eq!(lookups, 1, "the answer is cached");
    w.stop().await;
}

/// A runner-version lookup that GitHub refuses (a 422 on every deprecation request here) is
/// no warning and no blocker, and it is not retried on every pass: after the first refusal the
/// pool's passes go on without asking again for ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_runner_version_lookup_is_not_retried_every_pass() {
    use aci_runner_devkit::sim::github::{GhOpFaults, GithubFaults};
    let refuse = GithubFaults {
        ops: [("runner_deprecation".to_string(), GhOpFaults { unprocessable: 1.0, ..GhOpFaults::default() })]
            .into(),
        ..GithubFaults::default()
    };
    let mut w = World::builder("e2e-refused").github_faults(refuse).start().await;
    w.apply_ready("refused", 1).await;
    let lookups = || w.sim.github.calls().iter().filter(|c| c.op == "runner_deprecation").count();
    let first = lookups();
    assert!(first >= 1, "the version was looked up");
    // Several more passes (resync 1-2 s in the harness): no new lookup.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(lookups(), first, "a refused lookup is retried after minutes, not every pass");
    assert!(w.warnings_of("refused").await.iter().all(|(_, r, _)| r != "RunnerVersionDeprecated"));
    w.stop().await;
}
