//! Egress through an explicit forward proxy: tinyproxy (Debian's package, installed by
//! `scripts/control-plane install`) on 127.0.0.1, the controller binary as its own process with
//! `HTTP_PROXY`/`HTTPS_PROXY` pointing at it and `NO_PROXY` naming only the API server's address.
//! The simulators are addressed as `localhost` (the API server is `127.0.0.1`), so `NO_PROXY`
//! exempts the API server and nothing else; loopback is not exempt by default. Every ARM, Entra ID
//! and GitHub call the simulators logged must have its line in the proxy's log.
use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aci_runner_core::crd::RunnerPool;
use aci_runner_devkit::testing::control_plane;
use aci_runner_devkit::testing::harness::{
    apply_app_secret, apply_pool, condition, eventually, fast_sim_options, free_addr, pool_manifest,
};
use kube::Api;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_aci-runner-controller");
const T: Duration = Duration::from_secs(120);

/// Kills the process when the test ends, passing or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `http://127.0.0.1:PORT` as `http://localhost:PORT`.
fn via_localhost(url: &str) -> String {
    url.replacen("://127.0.0.1:", "://localhost:", 1)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap()
}

/// (method, path without query) of each `Request` line of tinyproxy's log, by target port.
fn proxied_requests(log: &str) -> HashMap<u16, Vec<(String, String)>> {
    let mut out: HashMap<u16, Vec<(String, String)>> = HashMap::new();
    for line in log.lines() {
        let Some((_, req)) = line.split_once("): ") else { continue };
        if !line.contains("Request (file descriptor") {
            continue;
        }
        let mut parts = req.split_whitespace();
        let (Some(method), Some(url)) = (parts.next(), parts.next()) else { continue };
        let Some(rest) = url.strip_prefix("http://localhost:") else { continue };
        let (port, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = format!("/{}", path.split('?').next().unwrap_or(""));
        out.entry(port.parse().unwrap()).or_default().push((method.to_string(), path));
    }
    out
}

/// Every (method, path) of `calls` has its own entry in `proxied` (a multiset inclusion).
fn missing_from_proxy(calls: &[(String, String)], proxied: &[(String, String)]) -> Vec<(String, String)> {
    let mut left: HashMap<&(String, String), usize> = HashMap::new();
    for p in proxied {
        *left.entry(p).or_default() += 1;
    }
    let mut missing = Vec::new();
    for c in calls {
        match left.get_mut(c) {
            Some(n) if *n > 0 => *n -= 1,
            _ => missing.push(c.clone()),
        }
    }
    missing
}

fn path_only(p: &str) -> String {
    p.split('?').next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_azure_entra_and_github_call_goes_through_the_proxy() {
    let (client, ns) = control_plane::setup("egress").await.unwrap();
    let cp = control_plane::shared();
    let sim = aci_runner_devkit::sim::start(fast_sim_options(17)).await.unwrap();
    apply_app_secret(&client, &ns, "github-app", &sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The proxy: its own process, its log in the temp dir.
    let proxy_port = free_addr().unwrap().port();
    let proxy_log = dir.path().join("tinyproxy.log");
    let conf = dir.path().join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {proxy_port}\nListen 127.0.0.1\nTimeout 600\nLogFile \"{}\"\nLogLevel Info\nMaxClients 100\nDisableViaHeader Yes\n",
            proxy_log.display()
        ),
    )
    .unwrap();
    let _proxy = Killed(
        Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (scripts/control-plane install installs it)"),
    );
    let listening = eventually(Duration::from_secs(20), || async {
        std::net::TcpStream::connect(("127.0.0.1", proxy_port)).ok().map(|_| ())
    })
    .await;
    assert!(listening.is_some(), "tinyproxy never listened: {:?}", std::fs::read_to_string(&proxy_log));

    // The controller, with only the API server's address exempt from the proxy.
    let kubeconfig = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server:")).unwrap().trim();
    let api_host = url::Url::parse(server).unwrap().host_str().unwrap().to_string();
    assert_eq!(api_host, "127.0.0.1", "the simulators are addressed as localhost to differ from {server}");
    let arm = via_localhost(&sim.arm.url());
    let github = via_localhost(&sim.github.url());
    let health = free_addr().unwrap();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let ctl_log = dir.path().join("controller.log");
    let policy = dir.path().join("tenant-policy.yaml");
    let own_identity = aci_runner_core::policy::TenantPolicy::controller_identity_for([ns.clone()]);
    std::fs::write(&policy, serde_json::to_string(&own_identity).unwrap()).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--namespaces", &ns, "--leader-election", "false"])
        .arg("--tenant-policy")
        .arg(&policy)
        .args(["--health-listen", &health.to_string(), "--resync-interval", "5s"])
        .args(["--arm-endpoint", &arm, "--azure-authority-host", &arm])
        .args(["--arm-scope", "https://management.azure.com/.default"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HTTP_PROXY", &proxy)
        .env("HTTPS_PROXY", &proxy)
        .env("NO_PROXY", &api_host)
        .env("AZURE_TENANT_ID", sim.arm.tenant_id())
        .env("AZURE_CLIENT_ID", sim.arm.client_id())
        .env("AZURE_CLIENT_SECRET", sim.arm.client_secret())
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&ctl_log).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(dir.path().join("controller.err")).unwrap()));
    for k in ["http_proxy", "https_proxy", "no_proxy", "ALL_PROXY", "all_proxy", "SSL_CERT_FILE", "CA_BUNDLE"]
    {
        cmd.env_remove(k);
    }
    let mut controller = Killed(cmd.spawn().unwrap());

    let manifest =
        pool_manifest("egress", &sim, json!({"github": {"apiUrl": github}, "scaling": {"minIdle": 1}}));
    apply_pool(&client, &ns, &manifest).await.unwrap();
    let pools: Api<RunnerPool> = Api::namespaced(client.clone(), &ns);
    let ready = eventually(T, || async {
        let p = pools.get("egress").await.ok()?;
        (condition(&p, "Ready").map(|c| c.0) == Some("True".into())).then_some(p)
    })
    .await;
    let logs = || {
        format!(
            "controller:\n{}\n{}\nproxy:\n{}",
            std::fs::read_to_string(&ctl_log).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("controller.err")).unwrap_or_default(),
            std::fs::read_to_string(&proxy_log).unwrap_or_default()
        )
    };
    assert!(ready.is_some(), "the pool never became Ready\n{}", logs());

    // Stop the controller, then compare what the simulators saw with what the proxy forwarded.
    let _ = controller.0.kill();
    let _ = controller.0.wait();
    let proxied = proxied_requests(&std::fs::read_to_string(&proxy_log).unwrap());
    let arm_calls: Vec<(String, String)> =
        sim.arm.calls().iter().map(|c| (c.method.clone(), path_only(&c.path))).collect();
    let github_calls: Vec<(String, String)> =
        sim.github.calls().iter().map(|c| (c.method.clone(), path_only(&c.path))).collect();
    let entra = arm_calls.iter().filter(|(_, p)| p.contains("/oauth2/")).count();
    assert!(entra >= 1, "no Entra ID token request: {arm_calls:?}");
    assert!(arm_calls.iter().any(|(m, p)| m == "PUT" && p.contains("/containerGroups/")), "{arm_calls:?}");
    assert!(github_calls.iter().any(|(m, p)| m == "POST" && p.contains("access_tokens")), "{github_calls:?}");
    let empty = Vec::new();
    let via_arm = proxied.get(&port_of(&arm)).unwrap_or(&empty);
    let via_github = proxied.get(&port_of(&github)).unwrap_or(&empty);
    let missing = missing_from_proxy(&arm_calls, via_arm);
    assert!(missing.is_empty(), "ARM/Entra calls not seen by the proxy: {missing:?}\n{}", logs());
    let missing = missing_from_proxy(&github_calls, via_github);
    assert!(missing.is_empty(), "GitHub calls not seen by the proxy: {missing:?}\n{}", logs());
    // Nothing else went through the proxy either: the API server stayed direct.
    let others: Vec<_> = proxied.keys().filter(|p| **p != port_of(&arm) && **p != port_of(&github)).collect();
    assert!(others.is_empty(), "unexpected proxied ports {others:?}");
    let log = std::fs::File::open(&proxy_log).unwrap();
    let connects = std::io::BufReader::new(log)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("Request (file descriptor") && l.contains(" CONNECT "))
        .count();
    assert_eq!(connects, 0, "the API server was tunnelled through the proxy");
}

#[test]
fn the_proxy_log_parser_reads_tinyproxy_request_lines() {
    let log = "CONNECT   Dec 02 02:11:40.547 [4955]: Request (file descriptor 5): GET http://localhost:38124/foo?x=1 HTTP/1.1\n\
               INFO      Dec 02 02:11:40.547 [4955]: No upstream proxy for localhost\n\
               CONNECT   Dec 02 02:11:40.584 [4955]: Request (file descriptor 5): POST http://localhost:38125/a/b HTTP/1.1\n";
    let p = proxied_requests(log);
    assert_eq!(p[&38124], vec![("GET".to_string(), "/foo".to_string())]);
    assert_eq!(p[&38125], vec![("POST".to_string(), "/a/b".to_string())]);
    let calls = vec![("GET".to_string(), "/foo".to_string()), ("GET".to_string(), "/foo".to_string())];
    assert_eq!(missing_from_proxy(&calls, &p[&38124]), vec![("GET".to_string(), "/foo".to_string())]);
}
