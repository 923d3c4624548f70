//! The webhook endpoint's defences (issue 16, Deliver 4 and the webhook tests of Deliver 7):
//! the receiver's router and bounded server directly, and the production binary as its own
//! process (`aci-runner-controller run`, RSS read from `/proc`) against the simulators and the
//! local kube-apiserver.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aci_runner_controller::controller::server::{ConnLimits, serve_bounded};
use aci_runner_controller::github::webhook::{
    TARGET_ID_HEADER, TARGET_TYPE_HEADER, WebhookLimits, WebhookSecrets, router_with,
};
use aci_runner_controller::github::{DemandSignal, GithubMetrics, WEBHOOK_PATH};
use aci_runner_devkit::bench::procs::{ControllerProc, ControllerSpec};
use aci_runner_devkit::sim::github::{WebhookTarget, sign_webhook};
use aci_runner_devkit::testing::control_plane;
use aci_runner_devkit::testing::harness::ORG;
use aci_runner_devkit::testing::world::{World, ready_with};
use axum::body::Bytes;
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(90);

// ---- helpers --------------------------------------------------------------------------------

/// How a raw request sends its body.
#[derive(Clone, Copy)]
enum BodyMode {
    /// With `Content-Length`.
    Sized,
    /// `Transfer-Encoding: chunked`, 64 KiB a chunk.
    Chunked,
    /// Chunked, one chunk, then nothing more (the body never ends).
    Stalled,
}

/// POST `body` to the receiver at `addr` over a raw connection (so that a chunked or never-ending
/// body can be sent); the response's status, or `None` when the server closed the connection
/// without one. The response is read while the body is written: the server may answer (413) and
/// close before the body is through.
async fn raw_post(addr: SocketAddr, headers: &[(&str, String)], body: Bytes, send: BodyMode) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!("POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match send {
        BodyMode::Sized => head.push_str(&format!("content-length: {}\r\n\r\n", body.len())),
        BodyMode::Chunked | BodyMode::Stalled => head.push_str("transfer-encoding: chunked\r\n\r\n"),
    }
    let write = async move {
        wr.write_all(head.as_bytes()).await?;
        match send {
            BodyMode::Sized => wr.write_all(&body).await?,
            BodyMode::Chunked => {
                for chunk in body.chunks(64 * 1024) {
                    wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                    wr.write_all(chunk).await?;
                    wr.write_all(b"\r\n").await?;
                }
                wr.write_all(b"0\r\n\r\n").await?;
            }
            BodyMode::Stalled => {
                wr.write_all(format!("{:x}\r\n", body.len()).as_bytes()).await?;
                wr.write_all(&body).await?;
                wr.write_all(b"\r\n").await?;
                wr.flush().await?;
                futures::future::pending::<()>().await;
            }
        }
        wr.flush().await?;
        // Keep the write half open until the response is read.
        futures::future::pending::<()>().await;
        Ok::<_, std::io::Error>(wr)
    };
    let read = async move {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 1024];
        loop {
            let n = rd.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..end]).to_string();
                return line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            }
        }
    };
    tokio::pin!(write, read);
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            r = &mut read => r,
            _ = &mut write => read.await,
        }
    })
    .await
    .ok()
    .flatten()
}

/// The headers of a `workflow_job` delivery of App `app` (when given), signed with `secret`.
fn delivery_headers(
    secret: &str,
    body: &[u8],
    delivery: &str,
    app: Option<i64>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("x-github-event", "workflow_job".to_string()),
        ("x-github-delivery", delivery.to_string()),
        ("x-hub-signature-256", sign_webhook(secret.as_bytes(), body)),
        ("content-type", "application/json".to_string()),
    ];
    if let Some(app) = app {
        h.push((TARGET_TYPE_HEADER, "integration".to_string()));
        h.push((TARGET_ID_HEADER, app.to_string()));
    }
    h
}

/// A `queued` (or other `action`) delivery body for job `id` with these labels, in org [`ORG`].
fn job_body(action: &str, id: i64, labels: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action,
        "workflow_job": {"id": id, "run_id": 1, "labels": labels, "status": action, "runner_name": null},
        "repository": {"full_name": format!("{ORG}/app")},
        "organization": {"login": ORG},
    }))
    .unwrap()
}

/// POST a signed delivery with reqwest, delivering again (as GitHub's "Redeliver" does) while it
/// is shed with 503 or the connection fails; its final status.
async fn deliver(url: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + T;
    loop {
        let mut req = http.post(url).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(r) if r.status() != 503 => return r.status().as_u16(),
            _ if Instant::now() > deadline => panic!("{url} never took the delivery"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The sum of the samples of metric `name` whose line contains every `filter`.
fn metric(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn metrics_of(ctl: &ControllerProc) -> String {
    reqwest::get(format!("{}/metrics", ctl.health_url)).await.unwrap().text().await.unwrap()
}

/// Wait until the controller's metric `name` (with `filters`) reaches `want`.
async fn wait_metric(ctl: &ControllerProc, name: &str, filters: &[&str], want: f64) -> String {
    let deadline = Instant::now() + T;
    loop {
        let text = metrics_of(ctl).await;
        if metric(&text, name, filters) >= want {
            return text;
        }
        assert!(Instant::now() < deadline, "{name}{filters:?} never reached {want}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A receiver on a bounded server with these limits; its address, demand and metrics.
async fn receiver(
    secrets: WebhookSecrets,
    limits: WebhookLimits,
    conn: ConnLimits,
) -> (SocketAddr, tokio::sync::mpsc::Receiver<DemandSignal>, GithubMetrics) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let metrics = GithubMetrics::default();
    let app = router_with(secrets, tx, Some(metrics.clone()), limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_bounded(listener, app, conn));
    (addr, rx, metrics)
}

fn webhook_counts(metrics: &GithubMetrics) -> String {
    let mut reg = prometheus_client::registry::Registry::default();
    metrics.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    text
}

/// The controller process with the shared secret `shared` and these per-App secrets, watching
/// the world's namespace.
async fn controller(w: &World, dir: &std::path::Path, shared: &str, apps: &[(i64, &str)]) -> ControllerProc {
    let apps_dir = dir.join("app-secrets");
    std::fs::create_dir_all(&apps_dir).unwrap();
    for (app, secret) in apps {
        std::fs::write(apps_dir.join(app.to_string()), secret).unwrap();
    }
    ControllerProc::start_with(
        &w.sim,
        ControllerSpec {
            kubeconfig: control_plane::shared().kubeconfig.clone(),
            namespaces: vec![w.ns.clone()],
            resync: "2s".into(),
            gc_grace: "2m".into(),
            leader_election: false,
            lease_namespace: w.ns.clone(),
            dir: dir.to_path_buf(),
            webhook_secret: shared.to_string(),
            log_filter: "info".into(),
        },
        &["--webhook-secrets-dir".into(), apps_dir.display().to_string()],
    )
    .await
    .unwrap()
}

// ---- the router and server directly ----------------------------------------------------------

/// A declared body above the cap is answered 413 before it is read; a chunked one once it
/// passes the cap; a body that never ends is cut off by the request deadline (408); requests
/// beyond the concurrency limit are shed with 503 while the slow ones hold their slots.
#[tokio::test]
async fn body_cap_deadline_and_shedding() {
    let secret = "s";
    let limits = WebhookLimits {
        max_body_bytes: 4096,
        max_concurrent: 2,
        request_timeout: Duration::from_secs(4),
        ..WebhookLimits::default()
    };
    let (addr, _rx, metrics) =
        receiver(WebhookSecrets::single(SecretString::from(secret)), limits, ConnLimits::default()).await;
    let big = Bytes::from(vec![b'x'; 64 * 1024]);
    let h = delivery_headers(secret, &big, "d-big", None);
    assert_eq!(raw_post(addr, &h, big.clone(), BodyMode::Sized).await, Some(413));
    assert_eq!(raw_post(addr, &h, big.clone(), BodyMode::Chunked).await, Some(413));
    // A small bad-signature request is read and refused.
    let small = Bytes::from_static(b"{}");
    assert_eq!(raw_post(addr, &h, small.clone(), BodyMode::Sized).await, Some(401));
    // Two requests whose bodies never end take both slots ...
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(raw_post(addr, &[], Bytes::from_static(b"{"), BodyMode::Stalled)))
        .collect();
    // ... so, once both are inside, the next request is shed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = raw_post(addr, &h, small.clone(), BodyMode::Sized).await;
        if status == Some(503) {
            break;
        }
        assert!(Instant::now() < deadline, "never shed: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The deadline ends them (408) and frees the slots.
    for s in slow {
        assert_eq!(s.await.unwrap(), Some(408));
    }
    assert_eq!(raw_post(addr, &h, small, BodyMode::Sized).await, Some(401));
    let text = webhook_counts(&metrics);
    for result in ["too_large", "shed", "timeout", "bad_signature"] {
        assert!(
            text.contains(&format!("github_webhook_deliveries_total{{result=\"{result}\"}}")),
            "{result}: {text}"
        );
    }
}

/// A client that never finishes its headers, and an idle keep-alive connection, are closed after
/// the header-read timeout.
#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let conn = ConnLimits { header_read_timeout: Duration::from_secs(1), ..ConnLimits::default() };
    let (addr, _rx, _) =
        receiver(WebhookSecrets::single(SecretString::from("s")), WebhookLimits::default(), conn).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /webhooks/github HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (read returns, with a 408 or nothing) instead of waiting.
    let closed = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection with unfinished headers stayed open");
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), idle.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the idle connection stayed open");
}

/// The secret is chosen by the App headers: App 7's secret cannot pass for App 8; a delivery is
/// attributed to the App whose secret verified it; the same `X-GitHub-Delivery` twice is taken
/// once.
#[tokio::test]
async fn per_app_secrets_attribution_and_redelivery() {
    let apps = [(7, SecretString::from("seven")), (8, SecretString::from("eight"))].into_iter().collect();
    let secrets = WebhookSecrets::new(Some(SecretString::from("shared")), apps);
    let (addr, mut rx, metrics) = receiver(secrets, WebhookLimits::default(), ConnLimits::default()).await;
    let url = format!("http://{addr}{WEBHOOK_PATH}");
    let body = job_body("queued", 1, &["aci"]);
    // Signed with App 7's secret, claiming App 8: refused.
    let forged = delivery_headers("seven", &body, "d-1", Some(8));
    assert_eq!(deliver(&url, &forged, &body).await, 401);
    // Claiming App 7: taken, attributed to App 7.
    assert_eq!(deliver(&url, &delivery_headers("seven", &body, "d-2", Some(7)), &body).await, 202);
    assert_eq!(rx.recv().await.unwrap().app, Some(7));
    // The shared secret: attributed to no App, whatever App it claims without a secret of its own.
    assert_eq!(deliver(&url, &delivery_headers("shared", &body, "d-3", Some(9)), &body).await, 202);
    assert_eq!(rx.recv().await.unwrap().app, None);
    // ... but not for an App that has one.
    assert_eq!(deliver(&url, &delivery_headers("shared", &body, "d-4", Some(7)), &body).await, 401);
    // A redelivery: the same id again is answered 202 and not passed on.
    let again = delivery_headers("seven", &body, "d-2", Some(7));
    assert_eq!(deliver(&url, &again, &body).await, 202);
    assert!(rx.try_recv().is_err());
    let text = webhook_counts(&metrics);
    assert!(text.contains("github_webhook_deliveries_total{result=\"duplicate\"} 1"), "{text}");
    assert!(text.contains("github_webhook_deliveries_total{result=\"accepted\"} 2"), "{text}");
    assert!(text.contains("github_webhook_deliveries_total{result=\"bad_signature\"} 2"), "{text}");
}

// ---- the controller process ------------------------------------------------------------------

/// 1,000 requests of 2 MiB with bad signatures (half with `Content-Length`, half chunked), 100 at
/// a time, plus 200 small ones with bad signatures, while the valid delivery of a queued job
/// arrives among them: the controller's RSS (`/proc/<pid>/status` VmRSS, sampled every 20 ms)
/// stays under 128 MiB, no flood request is taken, the warnings are rate-limited, and the valid
/// delivery scales its pool (minIdle 0, so only demand creates a runner: the simulator's create
/// calls and the busy runner show it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_bad_signatures_keeps_rss_low_and_the_valid_delivery_scales_its_pool() {
    let w = World::builder("wh-flood").no_controller().start().await;
    let dir = tempfile::tempdir().unwrap();
    let app_id = w.sim.github.app_credentials().app_id;
    let mut ctl = controller(&w, dir.path(), "flood-shared-secret", &[(app_id, "flood-app-secret")]).await;
    let addr: SocketAddr =
        ctl.webhook_url.trim_start_matches("http://").split('/').next().unwrap().parse().unwrap();
    w.apply("flood", json!({"scaling": {"minIdle": 0, "maxRunners": 3}})).await;
    w.wait_pool("flood", "Ready with 0 runners", T, |p| ready_with(p, 0)).await;
    // The simulator sends no webhooks here: the valid delivery is the test's.
    let job = w.enqueue_one(60.0);
    assert_eq!(w.sim.arm.creates_accepted(), 0);

    let pid = ctl.pid().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_rss) = (stop.clone(), max_rss.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kb) = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u64>()
                        .ok()
                }) {
                    max_rss.fetch_max(kb * 1024, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let rss_before = ctl.rss_bytes().unwrap();

    let big = Bytes::from(vec![b'{'; 2 * 1024 * 1024]);
    let small = Bytes::from(vec![b'{'; 1024]);
    let bad = vec![
        ("x-github-event", "workflow_job".to_string()),
        ("x-hub-signature-256", format!("sha256={}", "0".repeat(64))),
    ];
    let valid_body = job_body("queued", job.id, &["aci"]);
    let valid = delivery_headers("flood-app-secret", &valid_body, "valid-1", Some(app_id));
    let started = Instant::now();
    // Item 600 is the valid delivery, in the middle of the flood.
    let results: Vec<(usize, Option<u16>)> = futures::stream::iter(0..1201usize)
        .map(|i| {
            let (big, small, bad, valid, valid_body) =
                (big.clone(), small.clone(), bad.clone(), valid.clone(), valid_body.clone());
            let url = ctl.webhook_url.clone();
            async move {
                let status = match i {
                    600 => Some(deliver(&url, &valid, &valid_body).await),
                    i if i % 6 == 5 => raw_post(addr, &bad, small, BodyMode::Sized).await,
                    i if i % 2 == 0 => raw_post(addr, &bad, big, BodyMode::Sized).await,
                    _ => raw_post(addr, &bad, big, BodyMode::Chunked).await,
                };
                (i, status)
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let max_rss = max_rss.load(Ordering::Relaxed);
    let big_count = results.iter().filter(|(i, _)| *i != 600 && i % 6 != 5).count();
    eprintln!(
        "flood: {big_count} × 2 MiB + {} small in {elapsed:?}; controller RSS {} MiB before, max {} MiB",
        results.len() - big_count - 1,
        rss_before >> 20,
        max_rss >> 20
    );
    assert!(big_count >= 1000);
    assert!(max_rss > 0 && max_rss < 128 << 20, "controller RSS reached {} MiB", max_rss >> 20);
    let valid_status = results.iter().find(|(i, _)| *i == 600).and_then(|(_, s)| *s);
    assert_eq!(valid_status, Some(202));
    let taken: Vec<_> = results.iter().filter(|(i, s)| *i != 600 && s.is_some_and(|s| s < 300)).collect();
    assert!(taken.is_empty(), "flood requests taken: {taken:?}");

    // The valid delivery became demand and the pool scaled for it: a create call, and the
    // runner took the job.
    let text = wait_metric(
        &ctl,
        "aci_runner_controller_webhook_deliveries_total",
        &["action=\"queued\"", "result=\"stored\""],
        1.0,
    )
    .await;
    assert!(
        metric(&text, "aci_runner_controller_github_webhook_deliveries_total", &["too_large"]) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "aci_runner_controller_github_webhook_deliveries_total", &["bad_signature"]) >= 1.0,
        "{text}"
    );
    let busy = w.wait_busy("flood").await;
    assert!(w.sim.arm.creates_accepted() >= 1);
    assert_eq!(w.job(job.id).runner_name.as_deref(), Some(busy.name.as_str()));
    // One warning line per 10 s at most (plus the first), not one per request.
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    let warnings = log.lines().filter(|l| l.contains("webhook delivery rejected")).count();
    assert!(warnings as u64 <= 2 + started.elapsed().as_secs() / 10, "{warnings} warning lines");
    assert!(ctl.panics().is_empty(), "{:?}", ctl.panics());
    ctl.stop().await;
}

/// With a secret per App: a delivery signed with another App's secret (claiming that App, or
/// claiming ours), one with the shared secret, and one for labels no pool carries change nothing
/// (no demand stored, no create call); a real job's deliveries from the simulated GitHub scale
/// the pool; a redelivery of its `queued` delivery after the job started is counted once and
/// does not bring its demand back (the same body under a new id would: it is stored again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_app_deliveries_change_nothing_and_a_redelivery_counts_once() {
    let w = World::builder("wh-forge").no_controller().start().await;
    let dir = tempfile::tempdir().unwrap();
    let app_id = w.sim.github.app_credentials().app_id;
    let other_app = app_id + 4242;
    let mut ctl = controller(
        &w,
        dir.path(),
        "forge-shared-secret",
        &[(app_id, "forge-app-secret"), (other_app, "forge-other-app-secret")],
    )
    .await;
    w.apply("forge", json!({"scaling": {"minIdle": 0, "maxRunners": 3}})).await;
    w.wait_pool("forge", "Ready with 0 runners", T, |p| ready_with(p, 0)).await;
    let url = ctl.webhook_url.clone();

    // The other App's secret, claiming the other App, for our org and labels: verified, but no
    // pool of that App.
    let b1 = job_body("queued", 9_000_001, &["aci"]);
    assert_eq!(
        deliver(&url, &delivery_headers("forge-other-app-secret", &b1, "f-1", Some(other_app)), &b1).await,
        202
    );
    // The other App's secret claiming our App: refused.
    let b2 = job_body("queued", 9_000_002, &["aci"]);
    assert_eq!(
        deliver(&url, &delivery_headers("forge-other-app-secret", &b2, "f-2", Some(app_id)), &b2).await,
        401
    );
    // The shared secret: our App has a secret of its own, so our pool does not take it.
    let b3 = job_body("queued", 9_000_003, &["aci"]);
    assert_eq!(deliver(&url, &delivery_headers("forge-shared-secret", &b3, "f-3", None), &b3).await, 202);
    // Our App, labels no pool carries.
    let b4 = job_body("queued", 9_000_004, &["gpu"]);
    assert_eq!(
        deliver(&url, &delivery_headers("forge-app-secret", &b4, "f-4", Some(app_id)), &b4).await,
        202
    );
    let text =
        wait_metric(&ctl, "aci_runner_controller_webhook_deliveries_total", &["result=\"no_pool\""], 3.0)
            .await;
    assert_eq!(
        metric(&text, "aci_runner_controller_webhook_deliveries_total", &["result=\"stored\""]),
        0.0,
        "{text}"
    );
    assert_eq!(metric(&text, "aci_runner_controller_demand_queue_length", &[]), 0.0, "{text}");
    // Passes after those deliveries create nothing.
    let passes = metric(&text, "aci_runner_controller_reconcile_total", &[]);
    wait_metric(&ctl, "aci_runner_controller_reconcile_total", &[], passes + 3.0).await;
    assert_eq!(w.sim.arm.creates_accepted(), 0, "{}", w.world("forge"));
    assert!(w.groups_of("forge").is_empty());

    // The real job: the simulated GitHub delivers as our App, signed with its secret.
    w.sim.github.set_webhook(Some(WebhookTarget { url: url.clone(), secret: "forge-app-secret".into() }));
    let job = w.enqueue_one(60.0);
    w.wait_busy("forge").await;
    wait_metric(&ctl, "aci_runner_controller_webhook_deliveries_total", &["action=\"in_progress\""], 1.0)
        .await;
    let queued =
        w.sim.github.deliveries().into_iter().find(|d| d.job_id == job.id && d.action == "queued").unwrap();
    // GitHub's "Redeliver": the same id and body.
    let body = job_body("queued", job.id, &["aci"]);
    let again = delivery_headers("forge-app-secret", &body, &queued.delivery_id, Some(app_id));
    assert_eq!(deliver(&url, &again, &body).await, 202);
    let text = wait_metric(
        &ctl,
        "aci_runner_controller_github_webhook_deliveries_total",
        &["result=\"duplicate\""],
        1.0,
    )
    .await;
    assert_eq!(
        metric(&text, "aci_runner_controller_github_webhook_deliveries_total", &["result=\"duplicate\""]),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "aci_runner_controller_webhook_deliveries_total",
            &["action=\"queued\"", "result=\"stored\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "aci_runner_controller_demand_queue_length", &[]), 0.0, "{text}");
    // Control: the same body under a new id is taken as a new delivery and stored again.
    let fresh = delivery_headers("forge-app-secret", &body, "fresh-id", Some(app_id));
    assert_eq!(deliver(&url, &fresh, &body).await, 202);
    wait_metric(
        &ctl,
        "aci_runner_controller_webhook_deliveries_total",
        &["action=\"queued\"", "result=\"stored\""],
        2.0,
    )
    .await;
    assert!(ctl.panics().is_empty(), "{:?}", ctl.panics());
    ctl.stop().await;
}
