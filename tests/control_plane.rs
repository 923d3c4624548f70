//! The local control plane (`scripts/control-plane start`) comes up when a port it drew is taken
//! before etcd or kube-apiserver binds it: it draws new ports and tries again.
//!
//! Several test binaries start their control planes at once, and every simulator and client in
//! them binds or connects on ports of their own; a fresh-clone CI run failed once when
//! kube-apiserver lost its probed port (`bind: address already in use`) to one of them. The
//! tests take the port deterministically: a listener of this process holds it, and
//! `CONTROL_PLANE_FIRST_PORTS` makes the script's first attempt use it.
use aci_runner_devkit::testing::control_plane::ControlPlane;
use std::net::TcpListener;

/// A port nobody listens on now (probed by binding and closing).
fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap()
}

/// Start a control plane whose first attempt uses `ports` (etcd client, etcd peer, apiserver);
/// returns it and the script's stderr.
fn start_with_first_ports(dir: &std::path::Path, ports: (u16, u16, u16)) -> (ControlPlane, String) {
    let first = format!("{},{},{}", ports.0, ports.1, ports.2);
    ControlPlane::start_with_env(dir, &[("CONTROL_PLANE_FIRST_PORTS", &first)])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The server URL the kubeconfig names.
fn server_of(cp: &ControlPlane) -> String {
    let kc = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    kc.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_string()
}

async fn assert_serves(cp: &ControlPlane) {
    let client = cp.client().await.unwrap();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.git_version, "v1.20.2");
}

#[tokio::test]
async fn a_taken_apiserver_port_is_answered_with_new_ports() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (cp, stderr) = start_with_first_ports(dir.path(), (unused_port(), unused_port(), taken));
    assert!(stderr.contains("drawing new ones"), "no second attempt:\n{stderr}");
    let server = server_of(&cp);
    assert!(!server.ends_with(&format!(":{taken}")), "{server} is the held port");
    assert_serves(&cp).await;
    cp.stop();
    drop(held);
}

#[tokio::test]
async fn a_taken_etcd_port_is_answered_with_new_ports() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (cp, stderr) = start_with_first_ports(dir.path(), (taken, unused_port(), unused_port()));
    assert!(stderr.contains("drawing new ones"), "no second attempt:\n{stderr}");
    assert_serves(&cp).await;
    cp.stop();
    drop(held);
}
