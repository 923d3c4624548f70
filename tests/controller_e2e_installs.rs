//! Two installs (issue 16, test 1): two controllers with different install ids, each on its own
//! control plane (two clusters), share one simulated subscription, resource group and GitHub
//! org, with same-named pools (same namespace, same name, same labels). Neither ever touches a
//! container group or registration of the other; both serve the workload; after both pools are
//! deleted nothing of either is left.
//!
//! The call logs tell the installs apart: install B's controller reaches the simulated ARM under
//! another host name (`localhost` instead of `127.0.0.1`, recorded as the call's `Host`) and
//! GitHub with a PAT instead of the App installation (recorded as the call's principal).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aci_runner_core::crd::RunnerPool;
use aci_runner_core::plan::install::{InstallId, owner_label, owner_label_of};
use aci_runner_devkit::sim::github::JobStatus;
use aci_runner_devkit::testing::control_plane::{self, ControlPlane};
use aci_runner_devkit::testing::harness::{
    self, apply_pool, condition, eventually, pool_manifest, start_controller,
};
use aci_runner_devkit::testing::world::World;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(90);
const POOL: &str = "twin";
const JOBS: u32 = 8;

/// The group name of an ARM container-group call path.
fn group_of(path: &str) -> Option<String> {
    let rest = path.split("/containerGroups/").nth(1)?;
    Some(rest.split(['?', '/']).next()?.to_string())
}

/// Pool status (idle, busy) on one cluster.
async fn counts(client: &Client, ns: &str) -> Option<(i32, i32, bool)> {
    let p = Api::<RunnerPool>::namespaced(client.clone(), ns).get_opt(POOL).await.ok()??;
    let st = p.status.as_ref()?;
    let ready = condition(&p, "Ready").map(|c| c.0) == Some("True".into());
    Some((st.idle, st.busy, ready))
}

/// Both installs' groups in one resource group: each planner's own list shows the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installs_in_one_resource_group_never_touch_each_others_runners() {
    two_installs(None).await
}

/// Install B's pool in another resource group of the subscription: only the subscription-wide
/// orphan sweep sees the other's groups, and the org's runner list holds both installs'
/// registrations without a group of theirs in the other's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installs_in_two_resource_groups_never_touch_each_others_runners() {
    two_installs(Some("rg-runners-b")).await
}

/// Install A on the shared control plane, install B on a second one; B's pool in
/// `resource_group_b` when given, else in A's resource group.
async fn two_installs(resource_group_b: Option<&str>) {
    // Cluster A: the shared control plane of this test binary; cluster B: a second one.
    let w = World::builder("e2e-installs").seed(16).no_controller().start().await;
    let dir_b = tempfile::tempdir().unwrap();
    let cp_b = ControlPlane::start_in(dir_b.path()).unwrap();
    let client_b = cp_b.client().await.unwrap();
    control_plane::install_crd(&client_b).await.unwrap();
    let ns: Namespace =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": w.ns}}))
            .unwrap();
    Api::<Namespace>::all(client_b.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let pat = w.sim.github.app_credentials().pats[0].clone();
    let secrets_b: Api<Secret> = Api::namespaced(client_b.clone(), &w.ns);
    let pat_secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "github-pat"},
        "stringData": {"token": pat}});
    harness::apply(&secrets_b, "github-pat", &pat_secret).await.unwrap();

    let a_host = w.sim.arm.url().trim_start_matches("http://").to_string();
    let b_url = w.sim.arm.url().replace("127.0.0.1", "localhost");
    let b_host = b_url.trim_start_matches("http://").to_string();
    assert_ne!(a_host, b_host);
    let mut opts_a = w.opts.clone();
    opts_a.args.install_id = Some("install-a".into());
    let mut opts_b = w.opts.clone();
    opts_b.args.install_id = Some("install-b".into());
    opts_b.args.arm_endpoint = Some(b_url);
    let ctl_a = w.spawn_controller(opts_a).await;
    let ctl_b = start_controller(&client_b, &w.sim, opts_b).await.unwrap();

    // The same pool on both clusters; B's authenticates to GitHub with the PAT.
    let scaling = json!({"scaling": {"minIdle": 2, "maxRunners": 4, "scaleDownDelay": "2s"}});
    let pool_a = apply_pool(&w.client, &w.ns, &pool_manifest(POOL, &w.sim, scaling.clone())).await.unwrap();
    let mut manifest_b = pool_manifest(POOL, &w.sim, scaling);
    manifest_b["spec"]["github"]
        .as_object_mut()
        .unwrap()
        .insert("tokenSecretRef".into(), json!({"name": "github-pat", "key": "token"}));
    manifest_b["spec"]["github"].as_object_mut().unwrap().remove("appSecretRef");
    if let Some(rg) = resource_group_b {
        manifest_b["spec"]["azure"]["resourceGroup"] = json!(rg);
    }
    let pool_b = apply_pool(&client_b, &w.ns, &manifest_b).await.unwrap();
    let label_a = owner_label(&InstallId::parse("install-a").unwrap(), &pool_a.metadata.uid.unwrap());
    let label_b = owner_label(&InstallId::parse("install-b").unwrap(), &pool_b.metadata.uid.unwrap());

    // Every registration ever listed, with its owner label (ids are never reused).
    let seen: Arc<Mutex<BTreeMap<i64, Option<String>>>> = Arc::default();
    let watcher = {
        let (sim, seen) = (w.sim.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                for r in sim.github.runners() {
                    let owner = owner_label_of(&r.labels).map(str::to_string);
                    seen.lock().unwrap().entry(r.id).or_insert(owner);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    // Each pool counts only its own runners: 2 idle each, while the org shows 4 of the shape.
    let settled = eventually(T, || async {
        let (a, b) = (counts(&w.client, &w.ns).await?, counts(&client_b, &w.ns).await?);
        let online = w.sim.github.runners().iter().filter(|r| r.online && !r.busy).count();
        (a == (2, 0, true) && b == (2, 0, true) && online == 4).then_some(())
    })
    .await;
    assert!(settled.is_some(), "never settled at 2 + 2: {}", w.world(POOL));

    // A workload both pools can take.
    let jobs = w.enqueue(&["aci"], 3.0, JOBS);
    let ids: BTreeSet<i64> = jobs.iter().map(|j| j.id).collect();
    let done = eventually(T, || async {
        let js: Vec<_> = w.sim.github.jobs().into_iter().filter(|j| ids.contains(&j.id)).collect();
        js.iter().all(|j| j.status == JobStatus::Completed).then_some(js)
    })
    .await;
    let Some(done) = done else { panic!("jobs never all completed: {:?}", w.sim.github.jobs()) };
    for j in &done {
        assert_eq!(j.conclusion.as_deref(), Some("success"), "job {} killed or failed: {j:?}", j.id);
    }
    let runners_used: BTreeSet<String> = done.iter().filter_map(|j| j.runner_name.clone()).collect();

    // Both pools deleted: each install removes everything of its own, nothing is left.
    Api::<RunnerPool>::namespaced(w.client.clone(), &w.ns)
        .delete(POOL, &DeleteParams::default())
        .await
        .unwrap();
    Api::<RunnerPool>::namespaced(client_b.clone(), &w.ns)
        .delete(POOL, &DeleteParams::default())
        .await
        .unwrap();
    let gone = eventually(T, || async {
        let a = Api::<RunnerPool>::namespaced(w.client.clone(), &w.ns).get_opt(POOL).await.ok()?;
        let b = Api::<RunnerPool>::namespaced(client_b.clone(), &w.ns).get_opt(POOL).await.ok()?;
        let empty = w.sim.arm.groups().is_empty() && w.sim.github.runners().is_empty();
        (a.is_none() && b.is_none() && empty).then_some(())
    })
    .await;
    assert!(gone.is_some(), "leaked after deleting both pools: {}", w.world(POOL));
    watcher.abort();

    // ARM: every container group was created and deleted through the same install's host.
    let calls = w.sim.arm.calls();
    let mut creator: BTreeMap<String, String> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.method == "PUT" && c.status < 300) {
        if let (Some(g), Some(h)) = (group_of(&c.path), &c.host) {
            creator.entry(g).or_insert(h.clone());
        }
    }
    let by_host = |h: &str| creator.values().filter(|c| c.as_str() == h).count();
    assert!(by_host(&a_host) >= 2 && by_host(&b_host) >= 2, "both installs created groups: {creator:?}");
    let mut deletes = 0;
    for c in calls.iter().filter(|c| c.method == "DELETE") {
        let g = group_of(&c.path).unwrap();
        assert_eq!(creator.get(&g), c.host.as_ref(), "group {g} deleted by the other install: {c:?}");
        deletes += 1;
    }
    assert!(deletes >= 4, "{deletes} deletes");
    // GitHub: every unregister came from the install whose owner label the registration has.
    let seen = seen.lock().unwrap().clone();
    for c in w.sim.github.calls().iter().filter(|c| c.op == "delete_runner") {
        let id: i64 = c.path.rsplit('/').next().unwrap().parse().unwrap();
        let owner = seen.get(&id).cloned().flatten();
        let want = if c.principal == "pat:0" { &label_b } else { &label_a };
        assert_eq!(owner.as_ref(), Some(want), "runner {id} unregistered by {}: {c:?}", c.principal);
    }
    let owners: BTreeSet<Option<String>> = seen.values().cloned().collect();
    assert_eq!(owners, [Some(label_a), Some(label_b)].into(), "every registration is labelled");
    assert!(runners_used.len() >= 2, "{runners_used:?}");

    ctl_a.stop().await.unwrap();
    ctl_b.stop().await.unwrap();
    cp_b.stop();
}
