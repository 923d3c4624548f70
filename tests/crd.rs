//! The RunnerPool API against a real local kube-apiserver (v1.20.2 + etcd).
use std::path::{Path, PathBuf};

use aci_runner_core::crd::{RunnerPool, RunnerPoolSpec, RunnerPoolStatus};
use aci_runner_devkit::testing::control_plane::{self, setup};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Deserialize;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no manifests in {}", dir.display());
    v
}

fn expectation(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# expect: ").map(str::to_string))
        .unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()))
}

/// The invalid fixtures under `tests/fixtures/<dir>`: (file, the field its `# expect:` line
/// names, its first document).
fn invalid_fixtures(dir: &str) -> Vec<(PathBuf, String, serde_json::Value)> {
    let files = yaml_files(&repo().join("tests/fixtures").join(dir));
    files.into_iter().map(|f| (f.clone(), expectation(&f), yaml_docs(&f).remove(0))).collect()
}

async fn create_any(client: &kube::Client, ns: &str, doc: &serde_json::Value) -> Result<(), kube::Error> {
    let api_version = doc["apiVersion"].as_str().unwrap();
    let kind = doc["kind"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = match kind {
        "Secret" => "secrets",
        "RunnerPool" => "runnerpools",
        other => panic!("unexpected kind {other} in examples"),
    };
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
    api.create(&PostParams::default(), &obj).await.map(|_| ())
}

#[tokio::test]
async fn crd_is_established_and_matches_checked_in_file() {
    let (client, _ns) = setup("crd").await.unwrap();
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client);
    let c = crds.get("runnerpools.aci-runners.dev").await.unwrap();
    let names = c.spec.names;
    assert_eq!(names.short_names.unwrap_or_default(), vec!["rp".to_string()]);
    assert_eq!(names.categories.unwrap_or_default(), vec!["aci-runners".to_string()]);
    let checked_in = std::fs::read_to_string(repo().join("crds/runnerpool.yaml")).unwrap();
    assert_eq!(
        checked_in,
        aci_runner_core::crd::crd_yaml().unwrap(),
        "crds/runnerpool.yaml is stale: run `cargo run -- crd | tee crds/runnerpool.yaml > charts/aci-runner-controller/crds/runnerpool.yaml`"
    );
}

#[tokio::test]
async fn every_example_is_accepted_and_valid() {
    let (client, ns) = setup("examples").await.unwrap();
    let mut pools = 0;
    for file in yaml_files(&repo().join("examples")) {
        for doc in yaml_docs(&file) {
            create_any(&client, &ns, &doc)
                .await
                .unwrap_or_else(|e| panic!("{} rejected: {e}", file.display()));
            if doc["kind"] == "RunnerPool" {
                pools += 1;
                let spec: RunnerPoolSpec = serde_json::from_value(doc["spec"].clone()).unwrap();
                spec.validate().unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            }
        }
    }
    assert!(pools >= 5, "expected the five example pools, found {pools}");
    // The server applied the schema defaults.
    let api: Api<RunnerPool> = Api::namespaced(client, &ns);
    let rp = api.get("org-linux").await.unwrap();
    assert_eq!(rp.spec.github.api_url, "https://api.github.com");
    assert_eq!(rp.spec.runner.image, aci_runner_core::crd::DEFAULT_RUNNER_IMAGE);
    assert_eq!(rp.spec.scaling.scale_down_delay, "5m");
    assert!(rp.spec.runner.registration.ephemeral);
}

#[tokio::test]
async fn schema_rejects_invalid_fixtures_naming_the_field() {
    let (client, ns) = setup("invalid").await.unwrap();
    for (file, expect, doc) in invalid_fixtures("invalid") {
        match create_any(&client, &ns, &doc).await {
            Ok(()) => panic!("{} was accepted by the API server", file.display()),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{}: {:?}", file.display(), s);
                assert!(
                    s.message.contains(&expect),
                    "{}: message {:?} does not name {expect}",
                    file.display(),
                    s.message
                );
            }
            Err(e) => panic!("{}: unexpected error {e}", file.display()),
        }
        // Rust validation (or deserialization) rejects it too.
        let rust = serde_json::from_value::<RunnerPoolSpec>(doc["spec"].clone())
            .map_err(|e| e.to_string())
            .and_then(|s| s.validate().map_err(|e| e.to_string()));
        assert!(rust.is_err(), "{} passes Rust validation", file.display());
    }
}

#[tokio::test]
async fn rust_validation_rejects_cel_level_cases() {
    // API servers before 1.25 ignore x-kubernetes-validations: these are accepted by the local
    // v1.20 server, so the controller's own checks must catch every one of them.
    let (client, ns) = setup("cel").await.unwrap();
    for (file, expect, doc) in invalid_fixtures("invalid-cel") {
        create_any(&client, &ns, &doc)
            .await
            .unwrap_or_else(|e| panic!("{}: schema-level rejection not expected: {e}", file.display()));
        let spec: RunnerPoolSpec = serde_json::from_value(doc["spec"].clone()).unwrap();
        let err = spec.validate().expect_err(&format!("{} passes Rust validation", file.display()));
        assert!(
            err.0.iter().any(|f| f.field == expect),
            "{}: errors {err} do not name {expect}",
            file.display()
        );
    }
}

#[tokio::test]
async fn client_creates_reads_and_applies_status() {
    let (client, ns) = setup("status").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for doc in yaml_docs(&repo().join("examples/org-jit-pool.yaml")) {
        if doc["kind"] == "Secret" {
            secrets.create(&PostParams::default(), &serde_json::from_value(doc).unwrap()).await.unwrap();
        }
    }
    let api: Api<RunnerPool> = Api::namespaced(client.clone(), &ns);
    let spec: RunnerPoolSpec = serde_json::from_value(serde_json::json!({
        "github": {"organization": "acme", "labels": ["aci"], "appSecretRef": {"name": "github-app"}},
        "azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "location": "westeurope"},
        "scaling": {"minIdle": 2}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &RunnerPool::new("pool-a", spec)).await.unwrap();
    let got = api.get("pool-a").await.unwrap();
    assert_eq!(got.spec, created.spec);
    assert_eq!(got.spec.scaling.min_idle, 2);

    let status = RunnerPoolStatus {
        observed_generation: got.metadata.generation,
        scope: Some(got.spec.scope_display()),
        desired: 2,
        idle: 2,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "RunnersReady".into(),
            message: "2 idle, 0 busy of 2 desired".into(),
            observed_generation: got.metadata.generation,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        }],
        ..Default::default()
    };
    let patch = serde_json::json!({
        "apiVersion": "aci-runners.dev/v1alpha1", "kind": "RunnerPool", "status": status
    });
    api.patch_status("pool-a", &PatchParams::apply("aci-runner-controller").force(), &Patch::Apply(&patch))
        .await
        .unwrap();
    let after = api.get_status("pool-a").await.unwrap();
    let st = after.status.unwrap();
    assert_eq!(st.idle, 2);
    assert_eq!(st.scope.as_deref(), Some("org/acme"));
    assert_eq!(st.conditions[0].type_, "Ready");
    // Status writes do not bump the spec generation.
    assert_eq!(after.metadata.generation, got.metadata.generation);
}

#[test]
fn kubectl_applies_crd_and_examples_and_prints_columns() {
    let cp = control_plane::shared();
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &cp.kubeconfig)
            .output()
            .expect("kubectl is part of the machine image");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ns = format!("kubectl-{}", std::process::id());
    // kube-apiserver < 1.25 does not know x-kubernetes-validations; kubectl's client-side schema
    // check against such a server rejects the field, so the CRD is applied without it there.
    let (ok, out) = kubectl(&["apply", "--validate=false", "-f", repo().join("crds").to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "crd/runnerpools.aci-runners.dev",
        "--timeout=30s",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&["create", "namespace", &ns]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(&["apply", "-n", &ns, "-f", repo().join("examples").to_str().unwrap()]);
    assert!(ok, "{out}");
    for file in yaml_files(&repo().join("tests/fixtures/invalid")) {
        let (ok, out) = kubectl(&["apply", "-n", &ns, "-f", file.to_str().unwrap()]);
        assert!(!ok, "{} accepted by kubectl apply: {out}", file.display());
    }
    let (ok, out) = kubectl(&["get", "rp", "-n", &ns]);
    assert!(ok, "{out}");
    let header = out.lines().next().unwrap_or_default().to_string();
    for col in ["NAME", "SCOPE", "IDLE", "BUSY", "DESIRED", "READY", "AGE"] {
        assert!(header.contains(col), "column {col} missing in {header:?}");
    }
    let (ok, out) = kubectl(&["get", "aci-runners", "-n", &ns, "-o", "name"]);
    assert!(ok && out.contains("runnerpool.aci-runners.dev/org-linux"), "{out}");
}
