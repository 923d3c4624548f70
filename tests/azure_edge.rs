//! The Azure edge against the simulated ARM over HTTP: each operation, each error class,
//! Retry-After, quota-aware rate limiting (500 creates, zero 429s), workload identity rotation,
//! non-blocking creates, templates validated against the ACI 2023-05-01 schema.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aci_runner_controller::azure::error::{ArmFailure, classify, parse_retry_after};
use aci_runner_controller::azure::{
    AzureClient, AzureClientConfig, AzureEdge, AzureError, AzureMetrics, BucketLimit, CloudConfig,
    CredentialRegistry, CredentialSpec, GroupOwner, RateLimitConfig, RateLimiter, RegistryPassword,
    RunnerBootstrap, RunnerTemplateInput, WindowLimit, container_group,
};
use aci_runner_core::crd::{Priority, RunnerPoolSpec};
use aci_runner_devkit::sim::arm::{
    ArmSim, ArmSimConfig, ArmSimHandle, DeniedAction, FaultConfig, OpFaults, Quotas,
};
use aci_runner_devkit::sim::clock::SimClock;
use aci_runner_devkit::sim::runtime::IdleRuntime;
use aci_runner_devkit::testing::specs::load_json;
use azure_core::auth::TokenCredential;
use serde_json::{Value, json};

const SUB: &str = "9d4f1c1e-2b7a-4f5e-8c3d-1a2b3c4d5e6f";
const RG: &str = "ci-runners";

fn assert_valid_group(v: &Value) {
    let s = load_json("azure/containerInstance-2023-05-01.json").unwrap_or_else(|e| panic!("{e}"));
    let schema = json!({ "definitions": s["definitions"], "$ref": "#/definitions/ContainerGroup" });
    let val = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = val.iter_errors(v).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{errors:?}\n{v:#}");
}

fn pool_spec(extra: Value) -> RunnerPoolSpec {
    let mut base = json!({
        "github": {"organization": "acme", "labels": ["linux", "x64"], "appSecretRef": {"name": "gh-app"}},
        "azure": {"subscriptionId": SUB, "resourceGroup": RG, "location": "westeurope", "tags": {"cost-center": "ci"}},
        "runner": {"cpu": 1.0, "memoryGB": 2.0, "env": [{"name": "TZ", "value": "UTC"}],
                   "secureEnvFrom": [{"name": "NPM_TOKEN", "secretKeyRef": {"name": "npm", "key": "token"}}]}
    });
    merge(&mut base, extra);
    serde_json::from_value(base).unwrap()
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn pool() -> GroupOwner {
    GroupOwner {
        namespace: "ci".into(),
        name: "linux".into(),
        uid: "6f1d2c3b-aaaa-bbbb-cccc-1234567890ab".into(),
        install_id: "ci.aci-runner-controller-3f2a9c01de".into(),
        spec_hash: "3f9a2c1d".into(),
    }
}

fn created() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().to_utc()
}

fn jit_input(name: &str, location: &str) -> RunnerTemplateInput {
    RunnerTemplateInput {
        name: name.into(),
        location: location.into(),
        priority: Priority::Regular,
        registration: RunnerBootstrap::Jit { encoded_config: "eyJqaXQiOiJjb25maWcifQ==".into() },
        secure_env: vec![("NPM_TOKEN".into(), "npm-secret".into())],
        registry_password: None,
        created: created(),
    }
}

// ------------------------------------------------------------------ templates

#[test]
fn jit_template_matches_golden_json_and_the_schema() {
    let cg = container_group(&pool_spec(json!({})), &pool(), &jit_input("linux-a1b2c", "westeurope"));
    let v = serde_json::to_value(&cg).unwrap();
    let golden = json!({
        "location": "westeurope",
        "tags": {
            "aci-runners-created": "2026-01-02T03:04:05Z",
            "aci-runners-install-id": "ci.aci-runner-controller-3f2a9c01de",
            "aci-runners-managed-by": "aci-runner-controller",
            "aci-runners-pool-name": "linux",
            "aci-runners-pool-namespace": "ci",
            "aci-runners-pool-uid": "6f1d2c3b-aaaa-bbbb-cccc-1234567890ab",
            "aci-runners-runner": "linux-a1b2c",
            "aci-runners-spec-hash": "3f9a2c1d",
            "cost-center": "ci"
        },
        "properties": {
            "containers": [{
                "name": "runner",
                "properties": {
                    "image": "ghcr.io/actions/actions-runner:2.329.0",
                    "command": ["/home/runner/run.sh"],
                    "environmentVariables": [
                        {"name": "TZ", "value": "UTC"},
                        {"name": "ACTIONS_RUNNER_INPUT_JITCONFIG", "secureValue": "eyJqaXQiOiJjb25maWcifQ=="},
                        {"name": "NPM_TOKEN", "secureValue": "npm-secret"}
                    ],
                    "resources": {"requests": {"cpu": 1.0, "memoryInGB": 2.0}}
                }
            }],
            "restartPolicy": "Never",
            "osType": "Linux",
            "priority": "Regular"
        }
    });
    assert_eq!(v, golden);
    assert_valid_group(&v);
}

#[test]
fn token_template_splits_plain_and_secure_env_and_carries_options() {
    let spec = pool_spec(json!({
        "azure": {
            "subnetIds": ["/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v/subnets/aci"],
            "identities": ["/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull"]
        },
        "runner": {
            "image": "acme.azurecr.io/runner:1",
            "registration": {"mode": "token", "ephemeral": false},
            "imageRegistry": {"server": "acme.azurecr.io", "credentialsSecretRef": {"name": "acr"}},
            "env": [{"name": "NPM_TOKEN", "value": "plain-would-leak"}, {"name": "TZ", "value": "UTC"}]
        }
    }));
    let mut input = jit_input("linux-z9y8x", "northeurope");
    input.registration = RunnerBootstrap::Token {
        url: "https://github.com/acme".into(),
        token: "AABBCC".into(),
        labels: vec!["linux".into(), "x64".into()],
        group: Some("ci".into()),
        ephemeral: false,
    };
    input.registry_password = Some(RegistryPassword { username: "acme".into(), password: "pw".into() });
    input.priority = Priority::Regular;
    let v = serde_json::to_value(container_group(&spec, &pool(), &input)).unwrap();
    assert_valid_group(&v);
    let p = &v["properties"];
    assert_eq!(p["restartPolicy"], "Always", "persistent runners restart");
    assert!(
        p["containers"][0]["properties"].get("command").is_none(),
        "token mode keeps the image entrypoint"
    );
    let env: BTreeMap<String, (Option<&str>, Option<&str>)> =
        p["containers"][0]["properties"]["environmentVariables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (e["name"].as_str().unwrap().to_string(), (e["value"].as_str(), e["secureValue"].as_str()))
            })
            .collect();
    assert_eq!(env["RUNNER_URL"], (Some("https://github.com/acme"), None));
    assert_eq!(env["RUNNER_NAME"], (Some("linux-z9y8x"), None));
    assert_eq!(env["RUNNER_LABELS"], (Some("linux,x64"), None));
    assert_eq!(env["RUNNER_GROUP"], (Some("ci"), None));
    assert_eq!(env["RUNNER_WORKDIR"], (Some("_work"), None));
    assert_eq!(env["RUNNER_EPHEMERAL"], (Some("false"), None));
    assert_eq!(env["RUNNER_TOKEN"], (None, Some("AABBCC")));
    assert_eq!(env["NPM_TOKEN"], (None, Some("npm-secret")), "secureEnvFrom always wins and stays secure");
    assert_eq!(env["TZ"], (Some("UTC"), None));
    assert!(!env.contains_key("ACTIONS_RUNNER_INPUT_JITCONFIG"));
    assert_eq!(
        p["subnetIds"][0]["id"],
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v/subnets/aci"
    );
    assert_eq!(
        p["imageRegistryCredentials"],
        json!([{"server": "acme.azurecr.io", "username": "acme", "password": "pw"}])
    );
    assert_eq!(v["identity"]["type"], "UserAssigned");
    assert!(v["identity"]["userAssignedIdentities"]
        .get("/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull")
        .is_some());
    assert_eq!(v["location"], "northeurope");

    // Registry pulled by identity; Spot priority.
    let spec = pool_spec(
        json!({"runner": {"image": "acme.azurecr.io/runner:1", "imageRegistry": {"server": "acme.azurecr.io",
        "identity": "/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull"}}}),
    );
    let mut input = jit_input("linux-spot1", "westeurope");
    input.priority = Priority::Spot;
    let v = serde_json::to_value(container_group(&spec, &pool(), &input)).unwrap();
    assert_valid_group(&v);
    assert_eq!(v["properties"]["priority"], "Spot");
    assert_eq!(
        v["properties"]["imageRegistryCredentials"][0],
        json!({"server": "acme.azurecr.io", "identity": "/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull"})
    );
    assert!(format!("{:?}", input.registration).contains("[REDACTED]"));
}

// ------------------------------------------------------------------ helpers

async fn sim(cfg: ArmSimConfig, scale: f64) -> ArmSimHandle {
    ArmSim::start(cfg, SimClock::new(scale), Arc::new(IdleRuntime)).await.unwrap()
}

fn cloud(h: &ArmSimHandle) -> CloudConfig {
    CloudConfig::custom(&h.url(), &h.url(), "https://management.azure.com/.default").unwrap()
}

fn secret_spec(h: &ArmSimHandle) -> CredentialSpec {
    CredentialSpec::ClientSecret {
        tenant_id: h.tenant_id(),
        client_id: h.client_id(),
        client_secret: h.client_secret().into(),
    }
}

fn client_with(
    h: &ArmSimHandle,
    rate: RateLimitConfig,
    cred: Arc<dyn TokenCredential>,
    scope: Option<&str>,
) -> AzureClient {
    let mut cfg = AzureClientConfig::from_cloud(&cloud(h));
    if let Some(s) = scope {
        cfg.scope = s.to_string();
    }
    let metrics = AzureMetrics::new();
    AzureClient::new(cred, cfg, RateLimiter::new(rate, metrics.clone()), metrics)
}

fn client(h: &ArmSimHandle) -> AzureClient {
    let reg = CredentialRegistry::new(cloud(h), Duration::from_secs(300));
    client_with(h, RateLimitConfig::default(), reg.get(&secret_spec(h)), None)
}

fn group(name: &str) -> azure_mgmt_containerinstance::package_preview_2024_05::models::ContainerGroup {
    container_group(&pool_spec(json!({})), &pool(), &jit_input(name, "westeurope"))
}

// ------------------------------------------------------------------ operations

#[tokio::test]
async fn create_get_list_delete_through_the_crate_with_pinned_api_version() {
    let cfg = ArmSimConfig { page_size: 2, ..ArmSimConfig::default() };
    let h = sim(cfg, 600.0).await;
    let c = client(&h);
    for i in 0..5 {
        let a = c
            .create_group(SUB, RG, &format!("linux-{i}abcd"), &group(&format!("linux-{i}abcd")))
            .await
            .unwrap();
        assert_eq!(a.status, 201);
        assert!(a.async_operation.is_some());
    }
    // An unmanaged group in the same resource group is not listed.
    let mut foreign = group("someone-else");
    foreign.resource.tags = Some(json!({"owner": "other-team"}));
    c.create_group(SUB, RG, "someone-else", &foreign).await.unwrap();
    // Idempotent PUT: 200.
    assert_eq!(c.create_group(SUB, RG, "linux-0abcd", &group("linux-0abcd")).await.unwrap().status, 200);

    for _ in 0..300 {
        if h.groups().iter().all(|g| g.state == "Running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let g = c.get_group(SUB, RG, "linux-0abcd").await.unwrap().expect("exists");
    assert_eq!(g.name, "linux-0abcd");
    assert_eq!(g.location, "westeurope");
    assert_eq!(g.provisioning_state.as_deref(), Some("Succeeded"));
    assert_eq!(g.state.as_deref(), Some("Running"));
    assert_eq!(g.priority.as_deref(), Some("Regular"));
    assert_eq!(g.restart_policy.as_deref(), Some("Never"));
    assert_eq!(g.tags["aci-runners-runner"], "linux-0abcd");
    assert_eq!(g.pool_uid(), Some("6f1d2c3b-aaaa-bbbb-cccc-1234567890ab"));
    assert_eq!(g.spec_hash(), Some("3f9a2c1d"));
    assert_eq!(g.created(), Some(created()));
    let ctr = g.container.as_ref().unwrap();
    assert_eq!((ctr.name.as_str(), ctr.state.as_deref(), ctr.restart_count), ("runner", Some("Running"), 0));
    assert!(ctr.start_time.is_some());
    assert!(g.id.ends_with("/containerGroups/linux-0abcd"));
    let events: Vec<&str> = g.events.iter().filter_map(|e| e.name.as_deref()).collect();
    assert_eq!(events, vec!["Pulling", "Pulled", "Started"]);
    assert!(g.events.iter().all(|e| e.last_timestamp.is_some() && e.count == Some(1)));

    // Exit → Succeeded with the exit code visible to the planner.
    assert!(h.exit_container("linux-1abcd", 0));
    let g1 = c.get_group(SUB, RG, "linux-1abcd").await.unwrap().unwrap();
    assert_eq!(g1.state.as_deref(), Some("Succeeded"));
    assert_eq!(g1.container.as_ref().unwrap().exit_code, Some(0));
    assert!(g1.container.as_ref().unwrap().finish_time.is_some());

    let listed = c.list_groups(SUB, RG).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, vec!["linux-0abcd", "linux-1abcd", "linux-2abcd", "linux-3abcd", "linux-4abcd"]);
    assert_eq!(h.call_counts()["list"][&200], 3, "three pages of two");

    c.delete_group(SUB, RG, "linux-0abcd").await.unwrap();
    assert_eq!(c.get_group(SUB, RG, "linux-0abcd").await.unwrap(), None);
    c.delete_group(SUB, RG, "linux-0abcd").await.unwrap();
    assert_eq!(h.call_counts()["delete"][&204], 1);

    // Every request used the pinned stable api-version.
    let calls = h.calls();
    let arm_calls: Vec<_> = calls.iter().filter(|c| c.op != "token").collect();
    assert!(arm_calls.len() > 10);
    for call in arm_calls {
        assert!(call.path.contains("api-version=2023-05-01"), "{}", call.path);
    }
}

/// `container_logs` reads the tail ACI answers (pinned api-version, `tail`, no timestamps); a
/// missing group or container is `NotFound`.
#[tokio::test]
async fn container_logs_reads_the_tail_and_classifies_a_missing_container() {
    // The ARM simulator's crash fault writes the container's dying line into its log.
    let faults =
        aci_runner_devkit::sim::arm::FaultConfig { crash_before_registration: 1.0, ..Default::default() };
    let h = sim(ArmSimConfig { faults, ..ArmSimConfig::default() }, 600.0).await;
    let c = client(&h);
    c.create_group(SUB, RG, "linux-lgabc", &group("linux-lgabc")).await.unwrap();
    let mut content = String::new();
    for _ in 0..300 {
        content = c.container_logs(SUB, RG, "linux-lgabc", "runner", 50).await.unwrap();
        if !content.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(content.contains("simulated crash"), "{content:?}");
    let call = h.calls().into_iter().rev().find(|c| c.op == "logs").unwrap();
    for part in [
        "/containerGroups/linux-lgabc/containers/runner/logs?",
        "api-version=2023-05-01",
        "tail=50",
        "timestamps=false",
    ] {
        assert!(call.path.contains(part), "{part} not in {}", call.path);
    }
    let missing_group = c.container_logs(SUB, RG, "nope-abcde", "runner", 50).await;
    assert!(matches!(missing_group, Err(AzureError::NotFound { .. })), "{missing_group:?}");
    let missing_container = c.container_logs(SUB, RG, "linux-lgabc", "other", 50).await;
    assert!(matches!(missing_container, Err(AzureError::NotFound { .. })), "{missing_container:?}");
}

#[tokio::test]
async fn subscription_list_spans_resource_groups_and_pages() {
    let cfg = ArmSimConfig { page_size: 2, ..ArmSimConfig::default() };
    let h = sim(cfg, 600.0).await;
    let c = client(&h);
    for (rg, name) in [(RG, "linux-0abcd"), ("rg-old", "linux-1abcd"), ("rg-old", "linux-2abcd")] {
        c.create_group(SUB, rg, name, &group(name)).await.unwrap();
    }
    let mut foreign = group("someone-else");
    foreign.resource.tags = Some(json!({"owner": "other-team"}));
    c.create_group(SUB, "rg-old", "someone-else", &foreign).await.unwrap();
    let before = h.call_counts().get("listAll").and_then(|m| m.get(&200)).copied().unwrap_or(0);

    let listed = c.list_groups_in_subscription(SUB).await.unwrap();
    let mut got: Vec<(&str, Option<&str>)> =
        listed.iter().map(|g| (g.name.as_str(), g.resource_group())).collect();
    got.sort();
    assert_eq!(
        got,
        vec![("linux-0abcd", Some(RG)), ("linux-1abcd", Some("rg-old")), ("linux-2abcd", Some("rg-old"))],
        "managed groups of every resource group, with the resource group from the ARM id"
    );
    assert_eq!(h.call_counts()["listAll"][&200] - before, 2, "two pages of two (four groups)");
    // The resource-group list still sees only its own.
    assert_eq!(c.list_groups(SUB, "rg-old").await.unwrap().len(), 2);
    assert!(c.list_groups_in_subscription("00000000-0000-0000-0000-00000000ffff").await.unwrap().is_empty());
}

#[tokio::test]
async fn create_returns_as_soon_as_arm_accepts_the_put() {
    let mut cfg = ArmSimConfig::default();
    cfg.faults.slow_provisioning_ms = BTreeMap::from([("westeurope".to_string(), 3_600_000)]);
    let h = sim(cfg, 1.0).await;
    let c = client(&h);
    let t0 = Instant::now();
    let a = c.create_group(SUB, RG, "linux-slow1", &group("linux-slow1")).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(a.provisioning_state.as_deref(), Some("Pending"));
    let g = c.get_group(SUB, RG, "linux-slow1").await.unwrap().unwrap();
    assert_eq!(g.provisioning_state.as_deref(), Some("Pending"));
    assert_eq!(h.call_counts()["create"].values().sum::<u64>(), 1, "the PUT was sent exactly once");
}

// ------------------------------------------------------------------ errors

#[tokio::test]
async fn each_error_class_from_the_simulator() {
    let h = sim(ArmSimConfig::default(), 600.0).await;
    let reg = CredentialRegistry::new(cloud(&h), Duration::from_secs(300));
    let cred = reg.get(&secret_spec(&h));
    let fresh = || {
        client_with(
            &h,
            RateLimitConfig { max_wait: Duration::from_millis(1), ..RateLimitConfig::default() },
            cred.clone(),
            None,
        )
    };
    let ops = |op: &str, f: OpFaults| FaultConfig {
        ops: BTreeMap::from([(op.to_string(), f)]),
        ..FaultConfig::default()
    };

    h.set_faults(ops("get", OpFaults { throttle: 1.0, ..OpFaults::default() }));
    let e = fresh().get_group(SUB, RG, "x").await.unwrap_err();
    assert_eq!(
        e,
        AzureError::Throttled {
            retry_after: Duration::from_secs(1),
            code: Some("TooManyRequests".into()),
            local: false
        }
    );
    assert!(e.is_retryable());

    h.set_faults(ops("get", OpFaults { internal_error: 1.0, ..OpFaults::default() }));
    let e = fresh().get_group(SUB, RG, "x").await.unwrap_err();
    assert!(matches!(e, AzureError::Transient { status: Some(500), .. }), "{e:?}");
    h.set_faults(ops("delete", OpFaults { unavailable: 1.0, ..OpFaults::default() }));
    let e = fresh().delete_group(SUB, RG, "x").await.unwrap_err();
    assert!(matches!(e, AzureError::Transient { status: Some(503), .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));

    h.set_faults(FaultConfig::default());
    h.set_quotas(Quotas { container_groups: 0, ..Quotas::default() });
    let e = fresh().create_group(SUB, RG, "q1", &group("q1")).await.unwrap_err();
    assert!(
        matches!(&e, AzureError::QuotaExceeded { code, .. } if code == "ContainerGroupQuotaReached"),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    h.set_quotas(Quotas::default());

    h.set_faults(FaultConfig {
        capacity: BTreeMap::from([("westeurope".to_string(), 0)]),
        ..FaultConfig::default()
    });
    let e = fresh().create_group(SUB, RG, "c1", &group("c1")).await.unwrap_err();
    assert!(
        matches!(&e, AzureError::CapacityUnavailable { location, .. } if location == "westeurope"),
        "{e:?}"
    );

    h.set_faults(FaultConfig {
        inaccessible_images: ["ghcr.io/actions/actions-runner:2.329.0".to_string()].into(),
        ..FaultConfig::default()
    });
    let e = fresh().create_group(SUB, RG, "i1", &group("i1")).await.unwrap_err();
    assert!(matches!(&e, AzureError::InvalidImage { code, .. } if code == "InaccessibleImage"), "{e:?}");

    h.set_faults(FaultConfig {
        denied_actions: vec![DeniedAction {
            client_id: h.client_id(),
            action: "Microsoft.ContainerInstance/containerGroups/write".into(),
        }],
        ..FaultConfig::default()
    });
    let e = fresh().create_group(SUB, RG, "a1", &group("a1")).await.unwrap_err();
    match e {
        AzureError::Auth { status: 403, permission, .. } => {
            assert_eq!(permission.as_deref(), Some("Microsoft.ContainerInstance/containerGroups/write"))
        }
        other => panic!("{other:?}"),
    }
    h.set_faults(FaultConfig::default());

    // Token for another audience: 401.
    let wrong_aud = client_with(
        &h,
        RateLimitConfig::default(),
        reg.get(&secret_spec(&h)),
        Some("https://storage.azure.com/.default"),
    );
    let e = wrong_aud.get_group(SUB, RG, "x").await.unwrap_err();
    assert!(
        matches!(&e, AzureError::Auth { status: 401, code: Some(c), .. } if c == "InvalidAuthenticationTokenAudience"),
        "{e:?}"
    );
    // Wrong secret: credential error, not retryable.
    let bad = reg.get(&CredentialSpec::ClientSecret {
        tenant_id: h.tenant_id(),
        client_id: h.client_id(),
        client_secret: "wrong".into(),
    });
    let e = client_with(&h, RateLimitConfig::default(), bad, None).get_group(SUB, RG, "x").await.unwrap_err();
    assert!(matches!(e, AzureError::Credential { retryable: false, .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong"), "the secret must not reach the message: {e}");

    // A throttled or failing token endpoint is transient, never a credential verdict.
    for faults in [
        OpFaults { throttle: 1.0, ..OpFaults::default() },
        OpFaults { internal_error: 1.0, ..OpFaults::default() },
        OpFaults { unavailable: 1.0, ..OpFaults::default() },
    ] {
        h.set_faults(FaultConfig {
            ops: BTreeMap::from([("token".to_string(), faults)]),
            ..FaultConfig::default()
        });
        let fresh_reg = CredentialRegistry::new(cloud(&h), Duration::from_secs(300));
        let c = client_with(&h, RateLimitConfig::default(), fresh_reg.get(&secret_spec(&h)), None);
        let e = c.get_group(SUB, RG, "x").await.unwrap_err();
        assert!(matches!(e, AzureError::Credential { retryable: true, .. }), "{faults:?}: {e:?}");
        assert!(e.is_retryable(), "{e:?}");
    }
    h.set_faults(FaultConfig::default());

    // A missing group is `None`; a missing subscription is an error.
    let known = ArmSimConfig { subscriptions: vec![SUB.into()], ..ArmSimConfig::default() };
    let h2 = sim(known, 600.0).await;
    let reg2 = CredentialRegistry::new(cloud(&h2), Duration::from_secs(300));
    let c2 = client_with(&h2, RateLimitConfig::default(), reg2.get(&secret_spec(&h2)), None);
    assert_eq!(c2.get_group(SUB, RG, "missing").await.unwrap(), None);
    let e = c2.get_group("0f0f0f0f-0000-0000-0000-000000000000", RG, "missing").await.unwrap_err();
    assert!(matches!(&e, AzureError::NotFound { code: Some(c), .. } if c == "SubscriptionNotFound"), "{e:?}");

    // Nobody listening: transient, retryable, no HTTP status.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        a
    };
    let mut dead_cfg = AzureClientConfig::from_cloud(&cloud(&h));
    dead_cfg.arm_endpoint = azure_core::Url::parse(&format!("http://{closed}/")).unwrap();
    let dead = AzureClient::new(
        cred.clone(),
        dead_cfg,
        RateLimiter::new(RateLimitConfig::default(), AzureMetrics::new()),
        AzureMetrics::new(),
    );
    let e = dead.get_group(SUB, RG, "x").await.unwrap_err();
    assert!(matches!(e, AzureError::Transient { status: None, .. }), "{e:?}");
    assert!(e.is_retryable());

    let e = fresh().create_group(SUB, RG, "Bad_Name", &group("Bad_Name")).await.unwrap_err();
    assert!(
        matches!(&e, AzureError::InvalidSpec { status: 400, code: Some(c), message } if c == "ContainerGroupNameInvalid" && message.contains("Bad_Name")),
        "{e:?}"
    );

    fresh().create_group(SUB, RG, "moved1", &group("moved1")).await.unwrap();
    let mut elsewhere = group("moved1");
    elsewhere.resource.location = Some("eastus".into());
    let e = fresh().create_group(SUB, RG, "moved1", &elsewhere).await.unwrap_err();
    assert!(
        matches!(&e, AzureError::Conflict { code: Some(c), .. } if c == "InvalidResourceLocation"),
        "{e:?}"
    );
}

#[test]
fn classification_table() {
    let now = chrono::Utc::now();
    let f = |status: u16, code: Option<&str>, message: &str, ra: Option<u64>| ArmFailure {
        status,
        code: code.map(str::to_string),
        message: message.to_string(),
        retry_after: ra.map(Duration::from_secs),
        correlation_id: None,
    };
    let table: Vec<(ArmFailure, &str)> = vec![
        (f(429, Some("SubscriptionRequestsThrottled"), "", Some(7)), "throttled"),
        (f(429, None, "", None), "throttled"),
        (
            f(409, Some("ContainerGroupQuotaReached"), "quota 'StandardCores' exceeded", None),
            "quota_exceeded",
        ),
        (f(409, Some("ServiceUnavailable"), "not available in the location", None), "capacity_unavailable"),
        (f(400, Some("InsufficientCapacity"), "", None), "capacity_unavailable"),
        (f(503, Some("ServiceUnavailable"), "try later", None), "transient"),
        (f(500, Some("InternalServerError"), "", None), "transient"),
        (f(502, None, "bad gateway", None), "transient"),
        (f(408, None, "", None), "transient"),
        (f(400, Some("InaccessibleImage"), "", None), "invalid_image"),
        (f(400, Some("RegistryErrorResponse"), "", None), "invalid_image"),
        (f(401, Some("ExpiredAuthenticationToken"), "", None), "auth"),
        (
            f(
                403,
                Some("AuthorizationFailed"),
                "does not have authorization to perform action 'Microsoft.ContainerInstance/containerGroups/delete' over scope",
                None,
            ),
            "auth",
        ),
        (f(409, Some("Conflict"), "", None), "conflict"),
        (f(404, Some("ResourceNotFound"), "", None), "not_found"),
        (f(400, Some("InvalidRequestContent"), "bad json", None), "invalid_spec"),
        (f(422, None, "", None), "invalid_spec"),
    ];
    for (fail, class) in table {
        assert_eq!(classify(&fail, "westeurope").class(), class, "{fail:?}");
    }
    assert_eq!(
        classify(&f(429, None, "", None), "x").retry_after(),
        Some(aci_runner_controller::azure::error::DEFAULT_THROTTLE_WAIT)
    );
    match classify(
        &f(
            403,
            Some("AuthorizationFailed"),
            "does not have authorization to perform action 'Microsoft.ContainerInstance/containerGroups/delete' over scope '/x'",
            None,
        ),
        "x",
    ) {
        AzureError::Auth { permission, .. } => {
            assert_eq!(permission.as_deref(), Some("Microsoft.ContainerInstance/containerGroups/delete"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(parse_retry_after("12", now), Some(Duration::from_secs(12)));
    let later = (now + chrono::Duration::seconds(30)).to_rfc2822();
    let d = parse_retry_after(&later, now).unwrap();
    assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(29), "{d:?}");
    assert_eq!(parse_retry_after("soon", now), None);
    // The sim's own error body shape, parsed from the wire format.
    let body = br#"{"error":{"code":"ContainerGroupQuotaReached","message":"Limit: '100'"}}"#;
    let parsed = ArmFailure::from_parts(409, |k| (k == "retry-after").then(|| "3".to_string()), body, now);
    assert_eq!(parsed.code.as_deref(), Some("ContainerGroupQuotaReached"));
    assert_eq!(parsed.retry_after, Some(Duration::from_secs(3)));
}

// ------------------------------------------------------------------ rate limiting

#[tokio::test]
async fn retry_after_pauses_the_bucket_for_every_caller() {
    let h = sim(ArmSimConfig::default(), 600.0).await;
    let reg = CredentialRegistry::new(cloud(&h), Duration::from_secs(300));
    let c = client_with(
        &h,
        RateLimitConfig { max_wait: Duration::from_millis(100), ..RateLimitConfig::default() },
        reg.get(&secret_spec(&h)),
        None,
    );
    let other_caller = c.clone();
    h.set_faults(FaultConfig {
        ops: BTreeMap::from([("create".to_string(), OpFaults { throttle: 1.0, ..OpFaults::default() })]),
        ..FaultConfig::default()
    });
    let e = c.create_group(SUB, RG, "r1", &group("r1")).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    h.set_faults(FaultConfig::default());
    let sent_before = h.call_counts()["create"].values().sum::<u64>();
    // Another caller, same subscription: refused locally, nothing sent.
    let e = other_caller.create_group(SUB, RG, "r2", &group("r2")).await.unwrap_err();
    assert!(matches!(e, AzureError::Throttled { local: true, .. }), "{e:?}");
    assert!(e.retry_after().unwrap() <= Duration::from_secs(1));
    assert_eq!(h.call_counts()["create"].values().sum::<u64>(), sent_before);
    // After Retry-After, it goes through.
    tokio::time::sleep(e.retry_after().unwrap() + Duration::from_millis(50)).await;
    assert_eq!(other_caller.create_group(SUB, RG, "r2", &group("r2")).await.unwrap().status, 201);
    // Reads were not paused by the write 429.
    assert!(c.get_group(SUB, RG, "r2").await.unwrap().is_some());
}

#[tokio::test]
async fn a_burst_of_500_creates_is_never_throttled_and_never_beyond_quota() {
    // 1 simulated hour per 2 real seconds: ACI windows of 5 min / 1 h become 167 ms / 2 s.
    let scale = 1800.0;
    let cfg = ArmSimConfig {
        token_lifetime_secs: 36_000,
        quotas: Quotas {
            container_groups: 1000,
            cores: 1000.0,
            creates_per_5min: 50,
            creates_per_hour: 150,
            ..Quotas::default()
        },
        ..ArmSimConfig::default()
    };
    let h = sim(cfg, scale).await;
    // The client's windows are the simulator's, converted to real time, plus a slack for the
    // time between a grant and its request reaching the simulator. The slack is absolute (1.5 s,
    // far above a request's latency even on a loaded machine), not a share of the 167 ms window:
    // a request delayed past the window's share would otherwise land in the simulator's next
    // window with that window's own requests.
    let real = |sim_secs: f64| Duration::from_secs_f64(sim_secs / scale);
    let slack = Duration::from_millis(1500);
    let rate = RateLimitConfig {
        creates: vec![
            WindowLimit { limit: 50, window: real(300.0) + slack },
            WindowLimit { limit: 150, window: real(3600.0) + slack },
        ],
        reads: BucketLimit { capacity: 1000.0, refill_per_sec: 1000.0 },
        writes: BucketLimit { capacity: 1000.0, refill_per_sec: 1000.0 },
        max_wait: Duration::from_secs(60),
        margin: Duration::ZERO,
    };
    let reg = CredentialRegistry::new(cloud(&h), Duration::from_secs(300));
    let c = client_with(&h, rate, reg.get(&secret_spec(&h)), None);
    let mut spec = pool_spec(json!({}));
    spec.runner.cpu = 0.1;
    spec.runner.memory_gb = 0.5;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let c = c.clone();
        let g = container_group(&spec, &pool(), &jit_input(&format!("burst-{i}"), "westeurope"));
        tasks.push(tokio::spawn(async move { c.create_group(SUB, RG, &format!("burst-{i}"), &g).await }));
    }
    for t in tasks {
        match t.await.unwrap() {
            Ok(a) => assert_eq!(a.status, 201),
            Err(e) => panic!("create failed: {e:?}; sim calls: {:?}", h.call_counts()),
        }
    }
    assert_eq!(h.throttled_count(), 0, "no 429 answers");
    assert_eq!(h.quota_rejections(), 0, "no request beyond the quota");
    assert_eq!(h.creates_accepted(), 500);
    assert_eq!(h.groups().len(), 500);
    // It took at least the three full hourly windows the quota implies.
    assert!(t0.elapsed() >= real(3.0 * 3600.0), "{:?}", t0.elapsed());
    // ... and not much more than the client's own windows imply (four hourly windows).
    assert!(t0.elapsed() < (real(3600.0) + slack) * 4 + Duration::from_secs(20), "{:?}", t0.elapsed());
}

// ------------------------------------------------------------------ credentials

#[tokio::test]
async fn workload_identity_token_file_is_reread_on_rotation() {
    let scale = 600.0;
    // Two real seconds of token lifetime.
    let cfg = ArmSimConfig { token_lifetime_secs: 1200, ..ArmSimConfig::default() };
    let h = sim(cfg, scale).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    let first = h.default_assertion_claims(3600).unwrap();
    std::fs::write(&file, h.federated_assertion(&first)).unwrap();
    let reg = CredentialRegistry::new(cloud(&h), Duration::from_secs(300));
    let spec = CredentialSpec::WorkloadIdentity {
        tenant_id: h.tenant_id(),
        client_id: h.client_id(),
        token_file: file.clone(),
    };
    let cred = reg.get(&spec);
    let c = client_with(&h, RateLimitConfig::default(), cred.clone(), None);
    assert_eq!(c.get_group(SUB, RG, "nope").await.unwrap(), None);
    assert_eq!(c.get_group(SUB, RG, "nope").await.unwrap(), None);
    assert_eq!(h.accepted_assertions(), vec![first.jti.clone()], "token cached between calls");
    assert_eq!(cred.acquisitions(), 1);

    // The kubelet rotates the projected token.
    let second = h.default_assertion_claims(3600).unwrap();
    std::fs::write(&file, h.federated_assertion(&second)).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // the ARM token expires
    assert_eq!(c.get_group(SUB, RG, "nope").await.unwrap(), None);
    assert_eq!(h.accepted_assertions(), vec![first.jti, second.jti], "next token used the new assertion");

    // A missing file is a credential error.
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = c.get_group(SUB, RG, "nope").await.unwrap_err();
    assert!(matches!(e, AzureError::Credential { .. }), "{e:?}");
}

#[tokio::test]
async fn credentials_are_shared_per_identity_and_managed_identity_works() {
    let h = sim(ArmSimConfig::default(), 1.0).await;
    let reg = CredentialRegistry::new(cloud(&h), Duration::from_secs(300));
    let a = reg.get(&secret_spec(&h));
    let b = reg.get(&secret_spec(&h));
    assert!(Arc::ptr_eq(&a, &b));
    let other = reg.get(&CredentialSpec::ClientSecret {
        tenant_id: h.tenant_id(),
        client_id: h.client_id(),
        client_secret: "rotated".into(),
    });
    assert!(!Arc::ptr_eq(&a, &other));
    assert!(!format!("{:?}", secret_spec(&h)).contains(&h.client_secret()), "secrets never in Debug");
    // Two pools, one identity: one token acquisition.
    let p1 = client_with(&h, RateLimitConfig::default(), a.clone(), None);
    let p2 = client_with(&h, RateLimitConfig::default(), b.clone(), None);
    for _ in 0..3 {
        p1.get_group(SUB, RG, "x").await.unwrap();
        p2.list_groups(SUB, RG).await.unwrap();
    }
    assert_eq!(a.acquisitions(), 1);
    assert_eq!(h.tokens_issued(), 1);

    let mi = reg.get(&CredentialSpec::ManagedIdentity {
        client_id: Some(h.config().managed_identities[0].clone()),
        endpoint: azure_core::Url::parse(&h.managed_identity_endpoint()).unwrap(),
    });
    let c = client_with(&h, RateLimitConfig::default(), mi, None);
    assert_eq!(c.create_group(SUB, RG, "mi-1", &group("mi-1")).await.unwrap().status, 201);

    // Sovereign clouds.
    assert_eq!(CloudConfig::us_government().arm_scope, "https://management.usgovcloudapi.net/.default");
    assert_eq!(CloudConfig::china().authority_host.as_str(), "https://login.chinacloudapi.cn/");
}

#[tokio::test]
async fn metrics_cover_operations_and_buckets() {
    let h = sim(ArmSimConfig::default(), 600.0).await;
    let edge = AzureEdge::new(cloud(&h), RateLimitConfig::default(), Duration::from_secs(300));
    let c = edge.client(&secret_spec(&h));
    let metrics = edge.metrics().clone();
    c.create_group(SUB, RG, "m1", &group("m1")).await.unwrap();
    c.get_group(SUB, RG, "m1").await.unwrap();
    let _ = c.create_group(SUB, RG, "Bad_Name", &group("Bad_Name")).await;
    assert_eq!(c.list_groups(SUB, RG).await.unwrap().len(), 1);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains(r#"azure_arm_requests_total{operation="create",status_class="2xx"} 1"#), "{text}");
    assert!(text.contains(r#"azure_arm_requests_total{operation="create",status_class="4xx"} 1"#), "{text}");
    assert!(text.contains(r#"azure_arm_requests_total{operation="get",status_class="2xx"} 1"#), "{text}");
    assert!(text.contains("azure_arm_request_duration_seconds_bucket"), "{text}");
    assert!(
        text.contains(r#"azure_arm_requests_total{operation="list",status_class="2xx"} 1"#),
        "one page, one request: {text}"
    );
    assert!(text.contains(r#"azure_ratelimit_bucket_level{subscription="9d4f1c1e-2b7a-4f5e-8c3d-1a2b3c4d5e6f",bucket="creates:westeurope:300s"} 98"#), "{text}");
    assert!(!text.contains(&h.client_secret()));
}

// ------------------------------------------------------------------ logs

#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields(format!("new span {}: ", attrs.metadata().name()));
        attrs.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }
    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields("record: ".into());
        values.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields(format!("{} {}: ", event.metadata().level(), event.metadata().target()));
        event.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }
}

#[tokio::test]
async fn no_secret_in_any_log_line_and_spans_carry_the_correlation_id() {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = Capture::default();
    let _guard =
        aci_runner_devkit::testing::capture_logs(tracing_subscriber::registry().with(capture.clone()));

    let h = sim(ArmSimConfig::default(), 600.0).await;
    let reg = CredentialRegistry::new(cloud(&h), Duration::from_secs(300));
    let cred = reg.get(&secret_spec(&h));
    let c = client_with(&h, RateLimitConfig::default(), cred.clone(), None);
    let g = group("logged-1");
    c.create_group(SUB, RG, "logged-1", &g).await.unwrap();
    c.get_group(SUB, RG, "logged-1").await.unwrap();
    c.list_groups(SUB, RG).await.unwrap();
    let _ = c.create_group(SUB, RG, "Bad_Name", &group("Bad_Name")).await.unwrap_err();
    c.delete_group(SUB, RG, "logged-1").await.unwrap();
    // Workload identity too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let assertion = h.federated_assertion(&h.default_assertion_claims(3600).unwrap());
    std::fs::write(&file, &assertion).unwrap();
    let wi = reg.get(&CredentialSpec::WorkloadIdentity {
        tenant_id: h.tenant_id(),
        client_id: h.client_id(),
        token_file: file,
    });
    client_with(&h, RateLimitConfig::default(), wi, None).get_group(SUB, RG, "x").await.unwrap();
    let bearer = cred.get_token(&["https://management.azure.com/.default"]).await.unwrap();

    let lines = capture.0.lock().unwrap().clone();
    assert!(lines.len() > 10, "{lines:?}");
    for secret in [
        h.client_secret(),
        bearer.token.secret().to_string(),
        assertion,
        "eyJqaXQiOiJjb25maWcifQ==".to_string(), // JIT config
        "npm-secret".to_string(),               // secureEnvFrom value
    ] {
        for l in &lines {
            assert!(!l.contains(&secret), "secret in log line: {l}");
        }
    }
    assert!(
        lines.iter().any(|l| l.starts_with("record: correlation_id=")),
        "ARM's correlation id is recorded on the span: {lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("new span azure.create_group")));
    // DEBUG lines of the HTTP stack were captured too (so the check above covers them).
    assert!(lines.iter().any(|l| l.contains("performing request")), "{lines:?}");
}
