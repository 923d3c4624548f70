//! The tenant policy (issue 16, test 5): a pool outside its namespace's policy — borrowing the
//! controller's Azure identity where the namespace may not, or naming a subscription or an
//! identity the policy does not list — is `Stalled` (`NotPermitted`) with a message naming the
//! field and an Event, and the simulators record no call for it, before or during its deletion;
//! a pool within the policy, watched by the same controller, is served as usual.
use std::time::Duration;

use aci_runner_core::policy::TenantPolicy;
use aci_runner_devkit::testing::harness::{SUBSCRIPTION, condition};
use aci_runner_devkit::testing::world::World;
use serde_json::{Value, json};

const OTHER_SUBSCRIPTION: &str = "00000000-0000-0000-0000-0000000000bb";
const IDENTITY: &str = "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/rg-id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/deployer";

/// A refused pool's patch: its own resource group and repository, so that any call made for it
/// would name them.
fn refused(n: u32, azure: Value) -> Value {
    let mut azure_spec = json!({"resourceGroup": format!("rg-refused-{n}")});
    if let (Some(a), Some(extra)) = (azure_spec.as_object_mut(), azure.as_object()) {
        a.extend(extra.clone());
    }
    json!({
        "github": {"organization": null, "repository": format!("octo-org/refused-{n}")},
        "azure": azure_spec,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_outside_their_tenant_policy_are_not_permitted_and_cause_no_call() {
    let w = World::builder("tenants")
        .extra_namespace("tenants-b")
        .controller(|o| {
            let (a, b) = (o.args.namespaces[0].clone(), o.args.namespaces[1].clone());
            let yaml = format!(
                "rules:\n  - namespaces: [{a}]\n    controllerIdentity: true\n    \
                 subscriptions: [\"{SUBSCRIPTION}\"]\n    identities: []\n  - namespaces: [{b}]\n    \
                 githubOwners: [octo-org]\n"
            );
            o.tenant_policy = Some(TenantPolicy::from_yaml(&yaml).unwrap());
        })
        .start()
        .await;
    let ns_b = w.extra_ns[0].clone();

    w.apply("other-sub", refused(1, json!({"subscriptionId": OTHER_SUBSCRIPTION}))).await;
    w.apply("identity", refused(2, json!({"identities": [IDENTITY]}))).await;
    w.apply_in(&ns_b, "borrower", refused(3, json!({}))).await;
    // Within the policy: the controller serves it while it refuses the others.
    w.apply_ready("allowed", 1).await;

    let expect_refused = |ns: String, name: &'static str, field: &'static str| {
        let w = &w;
        async move {
            let p = w
                .wait_pool_in(&ns, name, "NotPermitted", Duration::from_secs(60), |p| {
                    condition(p, "Stalled") == Some(("True".into(), "NotPermitted".into()))
                })
                .await;
            let stalled = p.status.iter().flat_map(|s| &s.conditions).find(|c| c.type_ == "Stalled").cloned();
            let message = stalled.map(|c| c.message).unwrap_or_default();
            assert!(
                message.contains("not permitted by the tenant policy") && message.contains(field),
                "{name}: {message}"
            );
            assert_eq!(condition(&p, "Ready").map(|c| c.1).as_deref(), Some("NotPermitted"), "{name}");
            w.expect_event_in(&ns, name, "NotPermitted", field).await;
        }
    };
    expect_refused(w.ns.clone(), "other-sub", "spec.azure.subscriptionId").await;
    expect_refused(w.ns.clone(), "identity", "spec.azure.identities[0]").await;
    expect_refused(ns_b.clone(), "borrower", "spec.azure.credentialsSecretRef").await;

    // Deleting a refused pool: its cleanup makes no call either; the finalizer goes once its
    // attempts are used up.
    w.delete_pool("other-sub").await;
    assert!(w.wait_gone("other-sub", Duration::from_secs(90)).await, "{}", w.describe("other-sub").await);

    let arm: Vec<String> = w
        .sim
        .arm
        .calls()
        .into_iter()
        .map(|c| c.path)
        .filter(|p| p.contains("rg-refused") || p.to_lowercase().contains(OTHER_SUBSCRIPTION))
        .collect();
    assert!(arm.is_empty(), "ARM calls for refused pools: {arm:?}");
    let github: Vec<String> =
        w.sim.github.calls().into_iter().map(|c| c.path).filter(|p| p.contains("refused-")).collect();
    assert!(github.is_empty(), "GitHub calls for refused pools: {github:?}");
    // The call logs are recorded: the allowed pool's calls are there.
    assert!(w.sim.arm.calls().iter().any(|c| c.path.contains("rg-runners")));
    assert!(!w.sim.github.calls().is_empty());
    let still = w.get_pool("allowed").await.unwrap();
    assert_eq!(condition(&still, "Ready").map(|c| c.0).as_deref(), Some("True"));
}
