//! The reconciler end to end: a real kube-apiserver (scripts/control-plane), the simulated Azure
//! and GitHub, and the controller (`run_with`, production edges) in this process.
use std::time::Duration;

use aci_runner_devkit::testing::control_plane;
use aci_runner_devkit::testing::harness::{condition, eventually};
use aci_runner_devkit::testing::world::World;
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
