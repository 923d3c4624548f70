//! The GitHub edge (`aci_runner_controller::github`) against the simulated GitHub over HTTP:
//! token sharing, ETag economy, JIT conflicts without replay, busy deletes, rate-limit budget,
//! webhook receiver.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aci_runner_controller::github::webhook::{WebhookSecrets, router_with_metrics, verify_signature};
use aci_runner_controller::github::{
    Credentials, DemandSignal, GithubClient, GithubError, GithubHub, GithubMetrics, HubConfig, PaceConfig,
    Scope,
};
use aci_runner_devkit::sim::clock::SimClock;
use aci_runner_devkit::sim::github::{
    GithubSim, GithubSimConfig, GithubSimHandle, WebhookTarget, sign_webhook,
};
use aci_runner_devkit::sim::runtime::{ContainerEnv, ExitNotifier, StartedContainer};
use aci_runner_devkit::testing::harness::jobs;
use secrecy::{ExposeSecret, SecretString};

async fn sim(scale: f64, cfg: GithubSimConfig) -> GithubSimHandle {
    GithubSim::start(cfg, SimClock::new(scale)).await.expect("sim starts")
}

fn hub_for(g: &GithubSimHandle, interval_secs: i64) -> GithubHub {
    hub_with(g, listing_every(interval_secs))
}

/// The default hub configuration with a list interval of `secs`.
fn listing_every(secs: i64) -> HubConfig {
    HubConfig { list_interval: chrono::Duration::seconds(secs), ..Default::default() }
}

/// A hub with `cfg` on the simulator's clock.
fn hub_with(g: &GithubSimHandle, cfg: HubConfig) -> GithubHub {
    let clock = g.clock();
    GithubHub::new(HubConfig { clock: Arc::new(move || clock.now()), ..cfg })
}

fn app_creds(g: &GithubSimHandle, installation: u64) -> Credentials {
    let c = g.app_credentials();
    Credentials::App {
        app_id: Some(c.app_id.to_string()),
        client_id: None,
        installation_id: installation,
        private_key_pem: SecretString::from(c.private_key_pem),
    }
}

/// The simulator (`scale`, `cfg`) and a client with the App's installation 1001 on a hub with
/// `hub` (on the simulator's clock).
async fn sim_and_client(scale: f64, cfg: GithubSimConfig, hub: HubConfig) -> (GithubSimHandle, GithubClient) {
    let g = sim(scale, cfg).await;
    let client = app_client(&hub_with(&g, hub), &g);
    (g, client)
}

/// A client of `hub` on the simulator with the App's installation 1001 (`octo-org`'s).
fn app_client(hub: &GithubHub, g: &GithubSimHandle) -> GithubClient {
    hub.client(&g.url(), app_creds(g, 1001)).unwrap()
}

fn org() -> Scope {
    Scope::Org("octo-org".into())
}

fn ok_calls(g: &GithubSimHandle, op: &str, status: u16) -> u64 {
    g.call_counts().get(op).and_then(|m| m.get(&status)).copied().unwrap_or(0)
}

#[tokio::test]
async fn fifty_pools_one_installation_one_token_mint_and_one_list() {
    let g = sim(10.0, GithubSimConfig::default()).await;
    let hub = hub_for(&g, 600);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = app_client(&hub, &g);
        tasks.push(tokio::spawn(async move { client.list_runners(&org()).await.map(|l| l.len()) }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 0);
    }
    // More calls within the token lifetime (1 h simulated = 6 min real here) reuse the token.
    let client = app_client(&hub, &g);
    client.registration_token(&org()).await.unwrap();
    client.runner_group_id(&org(), "aci").await.unwrap();
    assert_eq!(g.tokens_minted().get(&1001), Some(&1));
    assert_eq!(ok_calls(&g, "access_token", 201), 1);
    assert_eq!(ok_calls(&g, "list_runners", 200), 1, "one list per scope per interval, shared");
}

#[tokio::test]
async fn token_renewed_before_expiry_and_dropped_on_401() {
    // Scale 600: the 1 h token lives 6 s real; the 5 min renewal margin is 0.5 s real.
    let (g, client) = sim_and_client(600.0, GithubSimConfig::default(), listing_every(0)).await;
    client.registration_token(&org()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5700)).await;
    client.registration_token(&org()).await.unwrap();
    assert_eq!(g.tokens_minted().get(&1001), Some(&2), "renewed inside the margin, before GitHub says 401");
    assert_eq!(ok_calls(&g, "registration_token", 401), 0);
}

#[tokio::test]
async fn unchanged_runner_list_uses_304_and_costs_nothing() {
    // 150 registrations in a burst: lift GitHub's 80-writes-per-minute secondary limit.
    // ... and the client's pace of content-creating requests with it (as `--github-writes-per-minute`).
    let (g, client) = sim_and_client(
        60.0,
        GithubSimConfig { secondary_writes_per_minute: 1000, ..Default::default() },
        HubConfig {
            content_pace: PaceConfig { per_minute: 1000, ..PaceConfig::default() },
            ..listing_every(30)
        },
    )
    .await;
    // 150 runners: the list spans two pages of 100.
    for i in 0..150 {
        client.generate_jit_config(&org(), &format!("r-{i:03}"), &["aci".into()], 1, None).await.unwrap();
    }
    let first = client.list_runners(&org()).await.unwrap();
    assert_eq!(first.len(), 150);
    let used = g.rate_limits()[0].used;
    // Within the interval: served from memory, no request at all.
    let calls_before = g.calls().len();
    let again = client.list_runners(&org()).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(g.calls().len(), calls_before);
    // After the interval (30 s simulated = 0.5 s real): revalidated with If-None-Match.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let third = client.list_runners(&org()).await.unwrap();
    assert_eq!(third.len(), 150);
    assert_eq!(g.not_modified_counts().get("list_runners"), Some(&2), "both pages answered 304");
    assert_eq!(g.rate_limits()[0].used, used, "304s do not count against the rate limit");
    assert_eq!(g.rate_limits()[0].not_modified, 2);
    // A change shows up (the page that changed is fetched again).
    client.delete_runner(&org(), first[0].id).await.unwrap();
    let fourth = client.list_runners(&org()).await.unwrap();
    assert_eq!(fourth.len(), 149);
}

#[tokio::test]
async fn jit_conflict_is_reported_without_a_duplicate_registration() {
    let (g, client) = sim_and_client(10.0, GithubSimConfig::default(), listing_every(10)).await;
    let gid = client.runner_group_id(&org(), "aci").await.unwrap();
    assert_eq!(gid, 2);
    let jit =
        client.generate_jit_config(&org(), "pool-aaaaa", &["aci".into()], gid, Some("_work")).await.unwrap();
    assert!(jit.runner_id > 0);
    assert!(!format!("{jit:?}").contains(jit.encoded.expose_secret()), "the encoded config never prints");
    let err = client.generate_jit_config(&org(), "pool-aaaaa", &["aci".into()], gid, None).await.unwrap_err();
    match &err {
        GithubError::Conflict(m) => assert!(m.contains(&format!("id {}", jit.runner_id)), "{m}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(g.runners().iter().filter(|r| r.name == "pool-aaaaa").count(), 1);
    assert_eq!(
        (ok_calls(&g, "jitconfig", 201), ok_calls(&g, "jitconfig", 409)),
        (1, 1),
        "no replay of the POST"
    );
    // Bad labels and unknown groups are invalid requests / not found.
    let e = client.generate_jit_config(&org(), "x", &[], gid, None).await.unwrap_err();
    assert!(matches!(e, GithubError::InvalidRequest(_)), "{e:?}");
    let e = client.runner_group_id(&org(), "nope").await.unwrap_err();
    assert!(matches!(e, GithubError::NotFound(_)), "{e:?}");
    // Token mode: the URL config.sh takes.
    let t = client.registration_token(&org()).await.unwrap();
    assert_eq!(t.url, format!("{}/octo-org", g.url()));
    let repo = Scope::repo("octo-org/octo-repo").unwrap();
    let t = client.registration_token(&repo).await.unwrap();
    assert_eq!(t.url, format!("{}/octo-org/octo-repo", g.url()));
    client.remove_token(&repo).await.unwrap();
}

#[tokio::test]
async fn deleting_a_busy_runner_is_busy_and_gone_runners_are_fine() {
    let (g, client) = sim_and_client(60.0, GithubSimConfig::default(), listing_every(1)).await;
    let jit = client.generate_jit_config(&org(), "busy-1", &["aci".into()], 1, None).await.unwrap();
    let exits: Arc<Mutex<Vec<i32>>> = Arc::default();
    let e2 = exits.clone();
    g.runtime().start(
        StartedContainer {
            group_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/busy-1"
                .into(),
            group_name: "busy-1".into(),
            container_name: "runner".into(),
            image: "runner:latest".into(),
            command: vec![],
            env: vec![ContainerEnv {
                name: "ACTIONS_RUNNER_INPUT_JITCONFIG".into(),
                value: jit.encoded.expose_secret().into(),
                secure: true,
            }],
            tags: BTreeMap::new(),
        },
        ExitNotifier::new(move |c| e2.lock().unwrap().push(c)),
    );
    g.enqueue_jobs(jobs(&["aci"], 600.0, 1)).unwrap();
    let start = std::time::Instant::now();
    loop {
        client.invalidate_runners(&org()).await;
        let l = client.list_runners(&org()).await.unwrap();
        if l.iter().any(|r| r.id == jit.runner_id && r.busy && r.online()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "runner never got busy: {l:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = client.delete_runner(&org(), jit.runner_id).await.unwrap_err();
    assert!(matches!(e, GithubError::Busy(_)), "{e:?}");
    // Unknown ids are already gone: success.
    client.delete_runner(&org(), 999_999).await.unwrap();
    assert!(client.get_runner(&org(), 999_999).await.unwrap().is_none());
}

#[tokio::test]
async fn exhausted_rate_limit_sends_nothing_before_the_announced_reset() {
    // Scale 1800: the 1 h window is 2 s real.
    let (g, client) =
        sim_and_client(1800.0, GithubSimConfig { rate_limit: 3, ..Default::default() }, listing_every(0))
            .await;
    let mut reset = None;
    // Lists revalidate with ETags (free), so spend the budget on registration tokens.
    for _ in 0..10 {
        match client.registration_token(&org()).await {
            Ok(_) => {}
            Err(GithubError::RateLimited { reset: r }) => {
                reset = Some(r);
                break;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let reset = reset.expect("rate limited");
    let announced = g.rate_limits()[0].reset;
    assert!(reset.timestamp() >= announced, "waits at least until x-ratelimit-reset");
    assert!(client.rate_status().reason.unwrap().contains("rate limited"));
    let sent = g.calls().len();
    // Every call before the reset is refused locally.
    while g.clock().now() < reset - chrono::Duration::seconds(30) {
        client.invalidate_runners(&org()).await;
        let e = client.list_runners(&org()).await.unwrap_err();
        assert!(matches!(e, GithubError::RateLimited { .. }));
        let e = client.generate_jit_config(&org(), "x", &["aci".into()], 1, None).await.unwrap_err();
        assert!(matches!(e, GithubError::RateLimited { .. }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(g.calls().len(), sent, "no request reached GitHub before the reset");
    while g.clock().now() <= reset {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.invalidate_runners(&org()).await;
    client.list_runners(&org()).await.unwrap();
    assert!(g.calls().len() > sent);
}

#[tokio::test]
async fn low_remaining_polls_less_and_says_why() {
    let (g, client) = sim_and_client(
        60.0,
        GithubSimConfig { rate_limit: 100, ..Default::default() },
        HubConfig { low_remaining: 200, slow_factor: 10, ..listing_every(6) },
    )
    .await;
    client.list_runners(&org()).await.unwrap();
    let status = client.rate_status();
    assert_eq!(status.remaining, Some(99));
    assert!(status.reason.unwrap().contains("polling 10x less often"));
    // 6 s simulated (0.1 s real) later the list is still served from memory (60 s effective).
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.list_runners(&org()).await.unwrap();
    assert_eq!(ok_calls(&g, "list_runners", 200) + ok_calls(&g, "list_runners", 304), 1);
}

#[tokio::test]
async fn auth_errors_name_the_missing_permission_and_bad_keys() {
    let mut cfg = GithubSimConfig::default();
    cfg.installations[0].permissions.remove("organization_self_hosted_runners");
    let g = sim(10.0, cfg).await;
    let hub = hub_for(&g, 0);
    let client = app_client(&hub, &g);
    match client.list_runners(&org()).await.unwrap_err() {
        GithubError::Auth { permission, .. } => {
            assert_eq!(permission.as_deref(), Some("organization_self_hosted_runners=write"))
        }
        e => panic!("{e:?}"),
    }
    // Wrong installation.
    let e = hub.client(&g.url(), app_creds(&g, 4242)).unwrap().list_runners(&org()).await.unwrap_err();
    assert!(matches!(e, GithubError::Auth { .. }), "{e:?}");
    // Not a key.
    let bad = Credentials::App {
        app_id: Some("1".into()),
        client_id: None,
        installation_id: 1001,
        private_key_pem: SecretString::from(
            "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n",
        ),
    };
    let e = hub.client(&g.url(), bad).unwrap().list_runners(&org()).await.unwrap_err();
    assert!(matches!(e, GithubError::Auth { .. }), "{e:?}");
    // Enterprise scope with a PAT.
    let pat = Credentials::Pat { token: SecretString::from(g.app_credentials().pats[0].clone()) };
    let ent = Scope::Enterprise(g.app_credentials().enterprise);
    let pc = hub.client(&g.url(), pat).unwrap();
    pc.generate_jit_config(&ent, "ent-1", &["aci".into()], 1, None).await.unwrap();
    assert_eq!(pc.list_runners(&ent).await.unwrap().len(), 1);
    // ... but not with an App installation.
    let e = client.list_runners(&ent).await.unwrap_err();
    assert!(matches!(e, GithubError::Auth { .. }), "{e:?}");
    // Transient 5xx are classified as such.
    g.set_faults(aci_runner_devkit::sim::github::GithubFaults {
        seed: 1,
        ops: [(
            "registration_token".to_string(),
            aci_runner_devkit::sim::github::GhOpFaults { server_error: 1.0, ..Default::default() },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    });
    let e = pc.registration_token(&ent).await.unwrap_err();
    assert!(matches!(e, GithubError::Transient(_)) && e.is_retryable(), "{e:?}");
}

#[tokio::test]
async fn webhook_receiver_verifies_signatures_and_emits_demand() {
    let secret = "It's a Secret to Everybody";
    assert!(verify_signature(
        secret.as_bytes(),
        b"Hello, World!",
        Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    ));
    let metrics = GithubMetrics::default();
    let (url, mut rx) = serve_webhook_receiver(secret, 64, Some(metrics.clone())).await;
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(&serde_json::json!({
        "action": "queued",
        "workflow_job": {"id": 77, "labels": ["self-hosted", "aci"], "runner_name": null, "status": "future-status"},
        "repository": {"full_name": "octo-org/octo-repo"},
        "organization": {"login": "octo-org"}
    }))
    .unwrap();
    let post = |sig: String, body: Vec<u8>, event: &'static str| {
        http.post(&url)
            .header("x-github-event", event)
            .header("x-github-delivery", "d-1")
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
    };
    let r = post(sign_webhook(secret.as_bytes(), &body), body.clone(), "workflow_job").await.unwrap();
    assert_eq!(r.status(), 202);
    let sig = rx.recv().await.unwrap();
    assert_eq!(
        sig,
        DemandSignal {
            delivery_id: Some("d-1".into()),
            app: None,
            job_id: 77,
            action: "queued".into(),
            labels: vec!["self-hosted".into(), "aci".into()],
            runner_name: None,
            repository: Some("octo-org/octo-repo".into()),
            organization: Some("octo-org".into()),
        }
    );
    // Tampered body, wrong secret, missing signature: 401 and nothing emitted.
    let mut tampered = body.clone();
    tampered[5] ^= 1;
    let r = post(sign_webhook(secret.as_bytes(), &body), tampered, "workflow_job").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post(sign_webhook(b"another secret", &body), body.clone(), "workflow_job").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.post(&url).header("x-github-event", "workflow_job").body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Other events: accepted and ignored.
    let ping = br#"{"zen":"Keep it logically awesome."}"#.to_vec();
    let r = post(sign_webhook(secret.as_bytes(), &ping), ping, "ping").await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(rx.try_recv().is_err());
    let mut reg = prometheus_client::registry::Registry::default();
    metrics.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(text.contains("github_webhook_deliveries_total{result=\"bad_signature\"} 3"), "{text}");
    assert!(text.contains("github_webhook_deliveries_total{result=\"accepted\"} 1"), "{text}");
}

/// The webhook receiver with the shared secret `secret` (counting deliveries into `metrics`) on a
/// local port: its delivery URL and the demand it forwards (a channel of `capacity`).
async fn serve_webhook_receiver(
    secret: &str,
    capacity: usize,
    metrics: Option<GithubMetrics>,
) -> (String, tokio::sync::mpsc::Receiver<DemandSignal>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<DemandSignal>(capacity);
    let app = router_with_metrics(WebhookSecrets::single(SecretString::from(secret)), tx, metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/github", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

#[tokio::test]
async fn simulated_github_deliveries_reach_the_receiver() {
    let (url, mut rx) = serve_webhook_receiver("hook-secret", 64, None).await;
    let g = sim(60.0, GithubSimConfig::default()).await;
    g.set_webhook(Some(WebhookTarget { url, secret: "hook-secret".into() }));
    let jobs = g.enqueue_jobs(jobs(&["self-hosted", "aci"], 60.0, 3)).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let s = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        got.push(s);
    }
    got.sort_by_key(|s| s.job_id);
    assert_eq!(
        got.iter().map(|s| s.job_id).collect::<Vec<_>>(),
        jobs.iter().map(|j| j.id as u64).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|s| s.action == "queued" && s.organization.as_deref() == Some("octo-org")));
    assert!(g.deliveries().iter().all(|d| d.status == Some(202)));
}

#[tokio::test]
async fn edge_metrics_are_exported() {
    let g = sim(10.0, GithubSimConfig::default()).await;
    let hub = hub_for(&g, 0);
    let client = app_client(&hub, &g);
    client.list_runners(&org()).await.unwrap();
    let mut reg = prometheus_client::registry::Registry::default();
    hub.metrics().register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(text.contains("github_requests_total{endpoint=\"list_runners\",status=\"200\"} 1"), "{text}");
    assert!(
        text.contains("github_installation_token_mints_total{principal=\"installation:1001\"} 1"),
        "{text}"
    );
    assert!(text.contains("github_rate_limit_remaining{principal=\"installation:1001\"} 4999"), "{text}");
    assert!(text.contains("github_request_duration_seconds_count{endpoint=\"list_runners\"} 1"), "{text}");
}

#[tokio::test]
async fn token_rejected_with_401_is_dropped_and_reminted() {
    // The client uses the real clock while the simulator runs 3600x faster: the installation token
    // looks valid to the client but the simulator expires it after 1 s real (as when clocks or
    // revocations disagree). GETs are sent once more with a fresh token; the stale one is dropped.
    let g = sim(3600.0, GithubSimConfig::default()).await;
    let hub = GithubHub::new(HubConfig { list_interval: chrono::Duration::zero(), ..Default::default() });
    let client = app_client(&hub, &g);
    client.list_runners(&org()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client.invalidate_runners(&org()).await;
    client.list_runners(&org()).await.unwrap();
    assert_eq!(g.tokens_minted().get(&1001), Some(&2));
    assert_eq!(ok_calls(&g, "list_runners", 401), 1);
    // POSTs are not replayed: the 401 surfaces once, the next call mints a new token.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = client.registration_token(&org()).await.unwrap_err();
    assert!(matches!(e, GithubError::Auth { .. }), "{e:?}");
    assert_eq!(ok_calls(&g, "registration_token", 401), 1);
    client.registration_token(&org()).await.unwrap();
    assert_eq!(g.tokens_minted().get(&1001), Some(&3));
}

#[tokio::test]
async fn ghes_base_url_and_deprecations() {
    let deprecated: chrono::DateTime<chrono::Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    let g = sim(
        10.0,
        GithubSimConfig {
            deprecated_runner_versions: [("2.300.0".to_string(), deprecated)].into_iter().collect(),
            ..Default::default()
        },
    )
    .await;
    let hub = hub_for(&g, 0);
    // GHES-style base URL: the /api/v3 path survives on every request, and config.sh's URL drops it.
    let client = hub.client(&format!("{}/api/v3", g.url()), app_creds(&g, 1001)).unwrap();
    let jit = client.generate_jit_config(&org(), "ghes-1", &["aci".into()], 1, None).await.unwrap();
    assert_eq!(client.list_runners(&org()).await.unwrap()[0].id, jit.runner_id);
    let t = client.registration_token(&org()).await.unwrap();
    assert_eq!(t.url, format!("{}/octo-org", g.url()));
    assert!(g.calls().iter().filter(|c| c.op != "access_token").all(|c| c.path.starts_with("/api/v3/")));

    assert_eq!(client.runner_version_deprecation(&org(), "2.300.0").await.unwrap(), Some(deprecated));
    assert_eq!(client.runner_version_deprecation(&org(), "2.329.0").await.unwrap(), None);
}

#[tokio::test]
async fn secondary_limit_retry_after_is_honoured() {
    use aci_runner_devkit::sim::github::{GhOpFaults, GithubFaults};
    // Scale 120: GitHub's `retry-after: 60` is half a second real.
    let (g, client) = sim_and_client(120.0, GithubSimConfig::default(), listing_every(0)).await;
    client.list_runners(&org()).await.unwrap();
    g.set_faults(GithubFaults {
        seed: 2,
        ops: [("registration_token".to_string(), GhOpFaults { rate_limited: 1.0, ..Default::default() })]
            .into_iter()
            .collect(),
        ..Default::default()
    });
    let before = g.clock().now();
    let reset = match client.registration_token(&org()).await.unwrap_err() {
        GithubError::RateLimited { reset } => reset,
        e => panic!("{e:?}"),
    };
    assert!(reset >= before + chrono::Duration::seconds(59), "{reset} vs {before}");
    g.set_faults(GithubFaults::default());
    let sent = g.calls().len();
    // Lists, JIT registrations, deletes: nothing is sent while the secondary limit holds.
    client.invalidate_runners(&org()).await;
    assert!(matches!(client.list_runners(&org()).await, Err(GithubError::RateLimited { .. })));
    assert!(matches!(client.delete_runner(&org(), 1).await, Err(GithubError::RateLimited { .. })));
    assert_eq!(g.calls().len(), sent);
    while g.clock().now() <= reset {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.registration_token(&org()).await.unwrap();
}

#[tokio::test]
async fn primary_limit_answered_429_is_understood_too() {
    let (g, client) = sim_and_client(
        1800.0,
        GithubSimConfig { rate_limit: 2, rate_limit_status: 429, ..Default::default() },
        listing_every(0),
    )
    .await;
    client.registration_token(&org()).await.unwrap();
    client.registration_token(&org()).await.unwrap();
    let e = client.registration_token(&org()).await.unwrap_err();
    assert!(matches!(e, GithubError::RateLimited { .. }), "{e:?}");
    assert_eq!(ok_calls(&g, "registration_token", 429), 1);
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every secret the client handles stays out of its logs, at trace level. The capture goes
/// through `testing::capture_logs`: installed with a plain thread-local `set_default`, it missed
/// the "JIT registration conflict" line in a fresh-clone CI run on a loaded machine, after a
/// sibling test had reached that callsite first on a thread without a subscriber.
#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    let cap = Capture::default();
    let writer = cap.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = aci_runner_devkit::testing::capture_logs(subscriber);

    let g = sim(60.0, GithubSimConfig::default()).await;
    let hub = hub_for(&g, 0);
    let client = app_client(&hub, &g);
    let jit = client.generate_jit_config(&org(), "quiet-1", &["aci".into()], 1, None).await.unwrap();
    let reg = client.registration_token(&org()).await.unwrap();
    let _ = client.generate_jit_config(&org(), "quiet-1", &["aci".into()], 1, None).await.unwrap_err();
    client.list_runners(&org()).await.unwrap();
    client.delete_runner(&org(), jit.runner_id).await.unwrap();
    let pat = g.app_credentials().pats[0].clone();
    let pc = hub.client(&g.url(), Credentials::Pat { token: SecretString::from(pat.clone()) }).unwrap();
    pc.list_runners(&org()).await.unwrap();
    let (url, _rx) = serve_webhook_receiver("hook-secret-value", 4, None).await;
    let body = br#"{"action":"queued","workflow_job":{"id":1,"labels":["body-marker-xyz"]}}"#.to_vec();
    let r = reqwest::Client::new()
        .post(&url)
        .header("x-github-event", "workflow_job")
        .header("x-hub-signature-256", "sha256=00")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let logs = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("JIT registration conflict"), "logs were captured: {logs}");
    let key = g.app_credentials().private_key_pem;
    let key_line = key.lines().nth(1).unwrap();
    for (what, secret) in [
        ("JIT config", jit.encoded.expose_secret()),
        ("registration token", reg.token.expose_secret()),
        ("PAT", pat.as_str()),
        ("App key", key_line),
        ("webhook secret", "hook-secret-value"),
        ("unauthenticated webhook body", "body-marker-xyz"),
    ] {
        assert!(!logs.contains(secret), "{what} leaked into the logs");
    }
    // Installation tokens never appear either.
    assert!(!logs.contains("ghs_"), "an installation token leaked into the logs");
}

/// The controller boxes these futures (`BoxFuture: Send`): they must be `Send`.
#[allow(dead_code)]
fn edge_futures_are_send(c: &aci_runner_controller::github::GithubClient, s: &Scope) {
    fn send<T: Send>(_: T) {}
    send(c.list_runners(s));
    send(c.generate_jit_config(s, "n", &[], 1, None));
    send(c.registration_token(s));
    send(c.remove_token(s));
    send(c.delete_runner(s, 1));
    send(c.get_runner(s, 1));
    send(c.find_runner_by_name(s, "n"));
    send(c.runner_group_id(s, "g"));
    send(c.runner_version_deprecation(s, "2.0.0"));
    send(c.invalidate_runners(s));
}

/// A server that answers headers and then never finishes the body is reported as "no complete
/// answer", the error the exchange's deadline names, even when the task that waits for it is
/// polled late: the runtime here is blocked past the deadline while the body hangs, so that every
/// timer has expired by the next poll. A second, same-length timeout inside reqwest used to win
/// that poll and surface as an anonymous "request or response body error" (the flaky
/// `hostile_github_answers_stall_only_their_pool` on a loaded CI machine).
#[tokio::test(flavor = "current_thread")]
async fn an_answer_that_never_completes_is_named_even_when_polled_late() {
    use axum::body::Body;
    use futures::StreamExt;
    // The hanging server runs on its own thread and runtime, so blocking this one does not stop it.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().fallback(move || {
                let sent = sent_tx.clone();
                async move {
                    let start = futures::stream::once(async move {
                        let _ = sent.send(());
                        Ok::<_, std::convert::Infallible>(bytes::Bytes::from("[{\"id"))
                    });
                    axum::response::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(Body::from_stream(start.chain(futures::stream::pending())))
                        .unwrap()
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();
    let timeout = Duration::from_millis(300);
    let hub = GithubHub::new(HubConfig {
        request_timeout: timeout,
        list_interval: chrono::Duration::zero(),
        ..Default::default()
    });
    let client = hub
        .client(
            &format!("http://{addr}"),
            Credentials::Pat { token: SecretString::from("ghp_test".to_string()) },
        )
        .unwrap();
    let call = tokio::spawn(async move { client.list_runners(&org()).await });
    // The body has begun; now this runtime sleeps through the deadline without polling anything.
    sent_rx.recv().await.unwrap();
    tokio::task::yield_now().await;
    std::thread::sleep(timeout * 3);
    let e = call.await.unwrap().unwrap_err();
    assert!(matches!(&e, GithubError::Transient(m) if m.contains("no complete answer")), "{e:?}");
}
