//! Fidelity of the simulated GitHub: every served request/response validated against the pinned
//! runners REST extract (OpenAPI 3.0), webhook payloads against octokit's `workflow_job` schemas,
//! octocrab over HTTP (App → installation → jitconfig, list, delete), the published signature
//! vector, simulated runners driven through the `ContainerRuntime` trait, auth, rate limits,
//! ETags and seeded faults.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aci_runner_controller::github::mint_app_jwt;
use aci_runner_devkit::sim::clock::SimClock;
use aci_runner_devkit::sim::github::{
    GhOpFaults, GithubFaults, GithubSim, GithubSimConfig, GithubSimHandle, JobStatus, WebhookTarget,
    sign_webhook,
};
use aci_runner_devkit::sim::runtime::{ContainerEnv, ExitNotifier, StartedContainer};
use aci_runner_devkit::testing::harness::{jobs, runner_group_body};
use aci_runner_devkit::testing::specs::load_json;
use serde_json::{Value, json};

// ------------------------------------------------------------------ OpenAPI helpers

/// OpenAPI 3.0 `nullable: true` → JSON Schema `type: [t, "null"]` (recursively).
fn denull(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("nullable") == Some(&Value::Bool(true)) {
                match m.get("type").cloned() {
                    Some(Value::String(t)) => {
                        m.insert("type".into(), json!([t, "null"]));
                    }
                    None if m.contains_key("$ref") || m.contains_key("allOf") => {
                        let inner = Value::Object(std::mem::take(m));
                        m.insert("anyOf".into(), json!([inner, {"type": "null"}]));
                    }
                    _ => {}
                }
                if let Some(Value::Array(e)) = m.get_mut("enum")
                    && !e.contains(&Value::Null)
                {
                    e.push(Value::Null);
                }
            }
            for (_, x) in m.iter_mut() {
                denull(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(denull),
        _ => {}
    }
}

struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> Self {
        let mut doc = load_json("github/runners-api.2022-11-28.json").unwrap_or_else(|e| panic!("{e}"));
        denull(&mut doc);
        Self { doc }
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r.trim_start_matches('#');
                self.doc.pointer(ptr).unwrap_or_else(|| panic!("unresolved {r}"))
            }
            None => v,
        }
    }

    fn operation(&self, tmpl: &str, method: &str) -> &Value {
        self.doc["paths"]
            .get(tmpl)
            .and_then(|p| p.get(method.to_ascii_lowercase()))
            .unwrap_or_else(|| panic!("{method} {tmpl} not in the spec"))
    }

    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let root = json!({"components": self.doc["components"], "allOf": [schema]});
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .build(&root)
            .expect("schema builds")
    }

    fn check(&self, what: &str, schema: &Value, v: &Value) {
        let val = self.validator(schema);
        let errors: Vec<String> = val.iter_errors(v).map(|e| format!("{e} at {}", e.instance_path)).collect();
        assert!(errors.is_empty(), "{what}: {errors:?}\n{v:#}");
    }

    /// The documented response schema for (tmpl, method, status), if the status is documented.
    fn response_schema(&self, tmpl: &str, method: &str, status: u16) -> Option<Option<Value>> {
        let op = self.operation(tmpl, method);
        let r = op["responses"].get(status.to_string())?;
        let r = self.resolve(r);
        Some(r.pointer("/content/application~1json/schema").cloned())
    }

    fn request_schema(&self, tmpl: &str, method: &str) -> Option<Value> {
        let op = self.operation(tmpl, method);
        op.pointer("/requestBody/content/application~1json/schema").cloned()
    }
}

/// An HTTP client that validates every request and response against the spec.
struct Conform {
    spec: Spec,
    http: reqwest::Client,
    base: String,
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

/// The path of an operation's template for org and owner `octo-org`, repo `octo-repo`.
fn octo_path(tmpl: &str) -> String {
    tmpl.replace("{org}", "octo-org").replace("{owner}", "octo-org").replace("{repo}", "octo-repo")
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Conform {
    fn new(base: &str) -> Self {
        Self { spec: Spec::load(), http: reqwest::Client::new(), base: base.into(), seen: Mutex::default() }
    }

    async fn call(&self, method: &str, tmpl: &str, path: &str, token: &str, body: Option<Value>) -> Got {
        self.call_h(method, tmpl, path, token, body, &[]).await
    }

    /// [`Conform::call`] on the path of `tmpl` for org and owner `octo-org`, repo `octo-repo`.
    /// `POST {scope}/actions/runners/generate-jitconfig` (`scope`: `/orgs/{org}` or
    /// `/repos/{owner}/{repo}`) for a runner `name` in group 1 with the label `aci`.
    async fn generate_jit(&self, scope: &str, token: &str, name: &str) -> Got {
        let body = json!({"name": name, "runner_group_id": 1, "labels": ["aci"]});
        self.op("POST", &format!("{scope}/actions/runners/generate-jitconfig"), token, Some(body)).await
    }
    async fn op(&self, method: &str, tmpl: &str, token: &str, body: Option<Value>) -> Got {
        self.call(method, tmpl, &octo_path(tmpl), token, body).await
    }
    /// [`Conform::op`] on a path with one more parameter (`{runner_id}`, `{run_id}`): `id`.
    async fn op_id(&self, method: &str, tmpl: &str, id: i64, token: &str, body: Option<Value>) -> Got {
        let path = octo_path(tmpl);
        let (head, rest) = path.split_once('{').unwrap();
        let (_, tail) = rest.split_once('}').unwrap();
        self.call(method, tmpl, &format!("{head}{id}{tail}"), token, body).await
    }

    async fn call_h(
        &self,
        method: &str,
        tmpl: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Got {
        if let (Some(b), Some(s)) = (&body, self.spec.request_schema(tmpl, method)) {
            self.spec.check(&format!("request {method} {tmpl}"), &s, b);
        }
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/vnd.github+json");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        match self.spec.response_schema(tmpl, method, status) {
            Some(Some(schema)) => {
                self.spec.check(&format!("response {status} of {method} {tmpl}"), &schema, &body)
            }
            Some(None) => assert!(body.is_null(), "{status} of {method} {tmpl} must have no body"),
            None => {
                // Undocumented for this operation (auth, rate limit, 304, 5xx): GitHub's error shape.
                assert!(
                    [304, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503].contains(&status),
                    "unexpected {status} for {method} {path}: {body}"
                );
                if !body.is_null() {
                    let be = json!({"$ref": "#/components/schemas/basic-error"});
                    self.spec.check(&format!("error {status} of {method} {tmpl}"), &be, &body);
                }
            }
        }
        self.seen.lock().unwrap().insert((method.into(), tmpl.into(), status));
        Got { status, headers, body }
    }
}

// ------------------------------------------------------------------ sim helpers

async fn sim(scale: f64, cfg: GithubSimConfig) -> GithubSimHandle {
    GithubSim::start(cfg, SimClock::new(scale)).await.expect("sim starts")
}

/// [`sim`], a [`Conform`] client on it and an installation token of installation 1001.
async fn sim_with_token(scale: f64, cfg: GithubSimConfig) -> (GithubSimHandle, Conform, String) {
    let g = sim(scale, cfg).await;
    let c = Conform::new(&g.url());
    let tok = installation_token(&g, &c, 1001).await;
    (g, c, tok)
}

/// `GET /orgs/octo-org/actions/runners` with the PAT `pat`.
async fn list_org_runners(http: &reqwest::Client, g: &GithubSimHandle, pat: &str) -> reqwest::Response {
    http.get(format!("{}/orgs/octo-org/actions/runners", g.url())).bearer_auth(pat).send().await.unwrap()
}

async fn installation_token(g: &GithubSimHandle, c: &Conform, installation: i64) -> String {
    let creds = g.app_credentials();
    let jwt = mint_app_jwt(&creds.app_id.to_string(), &creds.private_key_pem, chrono::Utc::now()).unwrap();
    let path = format!("/app/installations/{installation}/access_tokens");
    let r = c.call("POST", "/app/installations/{installation_id}/access_tokens", &path, &jwt, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["token"].as_str().unwrap().to_string()
}

fn container(group: &str, env: Vec<(&str, &str, bool)>) -> StartedContainer {
    StartedContainer {
        group_id: format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/{group}"
        ),
        group_name: group.into(),
        container_name: "runner".into(),
        image: "ghcr.io/actions/actions-runner:latest".into(),
        command: vec!["/home/runner/run.sh".into()],
        env: env
            .into_iter()
            .map(|(n, v, s)| ContainerEnv { name: n.into(), value: v.into(), secure: s })
            .collect(),
        tags: BTreeMap::new(),
    }
}

type Exits = Arc<Mutex<Vec<(String, i32)>>>;

/// A captured delivery: (signature header, delivery id, body).
type Captured = (String, String, Vec<u8>);

fn notifier(exits: &Exits, group: &str) -> ExitNotifier {
    let exits = exits.clone();
    let group = group.to_string();
    ExitNotifier::new(move |code| exits.lock().unwrap().push((group.clone(), code)))
}

async fn wait_for(what: &str, real_timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < real_timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn every_operation_conforms_to_the_rest_description() {
    let (g, c, tok) = sim_with_token(10.0, GithubSimConfig::default()).await;

    // Runner groups (org).
    let r = c.op("GET", "/orgs/{org}/actions/runner-groups", &tok, None).await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> =
        r.body["runner_groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Default", "aci"]);
    let r = c
        .op(
            "POST",
            "/orgs/{org}/actions/runner-groups",
            &tok,
            Some(json!({"name": "gpu", "visibility": "all"})),
        )
        .await;
    assert_eq!(r.status, 201);

    // JIT configs: 201, 409 on a duplicate name, 422 on bad labels, 404 on an unknown group.
    let jit_t = "/orgs/{org}/actions/runners/generate-jitconfig";
    let jit_p = "/orgs/octo-org/actions/runners/generate-jitconfig";
    let mut ids = Vec::new();
    for n in ["r-1", "r-2", "r-3"] {
        let body =
            json!({"name": n, "runner_group_id": 2, "labels": ["aci", "linux"], "work_folder": "_work"});
        let r = c.call("POST", jit_t, jit_p, &tok, Some(body)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(r.body["encoded_jit_config"].as_str().unwrap().len() > 40);
        assert_eq!(r.body["runner"]["status"], "offline");
        ids.push(r.body["runner"]["id"].as_i64().unwrap());
    }
    for (body, status) in [
        (json!({"name": "r-1", "runner_group_id": 1, "labels": ["x"]}), 409),
        (json!({"name": "r-9", "runner_group_id": 1, "labels": ["a b"]}), 422),
        (json!({"name": "r-9", "runner_group_id": 77, "labels": ["x"]}), 404),
    ] {
        let r = c.call("POST", jit_t, jit_p, &tok, Some(body.clone())).await;
        assert_eq!(r.status, status, "{body}");
    }

    // List with paging, Link header and name filter.
    let lt = "/orgs/{org}/actions/runners";
    let r = c.call("GET", lt, "/orgs/octo-org/actions/runners?per_page=2", &tok, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total_count"], 3);
    assert_eq!(r.body["runners"].as_array().unwrap().len(), 2);
    let link = r.headers["link"].to_str().unwrap();
    assert!(link.contains("page=2>; rel=\"next\"") && link.contains("rel=\"last\""), "{link}");
    let r = c.call("GET", lt, "/orgs/octo-org/actions/runners?per_page=2&page=2", &tok, None).await;
    assert_eq!(r.body["runners"].as_array().unwrap().len(), 1);
    assert!(r.headers["link"].to_str().unwrap().contains("rel=\"prev\""));
    let r = c.call("GET", lt, "/orgs/octo-org/actions/runners?name=r-2", &tok, None).await;
    assert_eq!(r.body["total_count"], 1);
    assert_eq!(r.body["runners"][0]["name"], "r-2");
    let labels: Vec<&str> = r.body["runners"][0]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["self-hosted", "Linux", "X64", "aci", "linux"]);

    // Get, delete, 404 afterwards.
    let gt = "/orgs/{org}/actions/runners/{runner_id}";
    let r = c.op_id("GET", gt, ids[0], &tok, None).await;
    assert_eq!((r.status, r.body["name"].as_str()), (200, Some("r-1")));
    let r = c.op_id("DELETE", gt, ids[0], &tok, None).await;
    assert_eq!(r.status, 204);
    let r = c.op_id("DELETE", gt, ids[0], &tok, None).await;
    assert_eq!(r.status, 404);
    let r = c.op_id("GET", gt, ids[0], &tok, None).await;
    assert_eq!(r.status, 404);

    // Registration and remove tokens.
    for (t, p) in [
        (
            "/orgs/{org}/actions/runners/registration-token",
            "/orgs/octo-org/actions/runners/registration-token",
        ),
        ("/orgs/{org}/actions/runners/remove-token", "/orgs/octo-org/actions/runners/remove-token"),
        (
            "/repos/{owner}/{repo}/actions/runners/registration-token",
            "/repos/octo-org/octo-repo/actions/runners/registration-token",
        ),
        (
            "/repos/{owner}/{repo}/actions/runners/remove-token",
            "/repos/octo-org/octo-repo/actions/runners/remove-token",
        ),
    ] {
        let r = c.call("POST", t, p, &tok, None).await;
        assert_eq!(r.status, 201, "{p}");
    }

    // Repo scope.
    let r = c.generate_jit("/repos/{owner}/{repo}", &tok, "repo-r").await;
    assert_eq!(r.status, 201);
    let rid = r.body["runner"]["id"].as_i64().unwrap();
    let r = c.op("GET", "/repos/{owner}/{repo}/actions/runners", &tok, None).await;
    assert_eq!(r.body["total_count"], 1);
    let rt = "/repos/{owner}/{repo}/actions/runners/{runner_id}";
    let r = c.op_id("GET", rt, rid, &tok, None).await;
    assert_eq!(r.status, 200);
    // The repo runner is not visible at org level (different registration pool).
    let r = c.op_id("GET", gt, rid, &tok, None).await;
    assert_eq!(r.status, 404);
    let r = c.op_id("DELETE", rt, rid, &tok, None).await;
    assert_eq!(r.status, 204);

    // Workflow runs and jobs with the status filter.
    g.enqueue_jobs(jobs(&["self-hosted", "aci"], 60.0, 2)).unwrap();
    let runs_t = "/repos/{owner}/{repo}/actions/runs";
    let r = c.call("GET", runs_t, "/repos/octo-org/octo-repo/actions/runs?status=queued", &tok, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total_count"], 1);
    let run_id = r.body["workflow_runs"][0]["id"].as_i64().unwrap();
    let r =
        c.call("GET", runs_t, "/repos/octo-org/octo-repo/actions/runs?status=completed", &tok, None).await;
    assert_eq!(r.body["total_count"], 0);
    let r = c.op_id("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs", run_id, &tok, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total_count"], 2);
    assert_eq!(r.body["jobs"][0]["status"], "queued");

    // Rate limit endpoint and ETag revalidation (304 not counted).
    let r = c.op("GET", "/rate_limit", &tok, None).await;
    assert_eq!(r.status, 200);
    let used = r.body["resources"]["core"]["used"].as_u64().unwrap();
    assert!(used > 10);
    let r = c.op("GET", "/rate_limit", &tok, None).await;
    assert_eq!(r.body["rate"]["used"].as_u64().unwrap(), used, "/rate_limit is free");
    let r = c.call("GET", lt, "/orgs/octo-org/actions/runners", &tok, None).await;
    let etag = r.headers["etag"].to_str().unwrap().to_string();
    let used_before = r.headers["x-ratelimit-used"].to_str().unwrap().parse::<u64>().unwrap();
    let r =
        c.call_h("GET", lt, "/orgs/octo-org/actions/runners", &tok, None, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.headers["x-ratelimit-used"].to_str().unwrap().parse::<u64>().unwrap(), used_before);
    assert_eq!(g.not_modified_counts().get("list_runners"), Some(&1));

    // Every operation of the extract was exercised.
    let seen = c.seen.lock().unwrap().clone();
    for (tmpl, ops) in c.spec.doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            if m == "parameters" {
                continue;
            }
            assert!(
                seen.iter().any(|(sm, st, _)| sm.eq_ignore_ascii_case(m) && st == tmpl),
                "{m} {tmpl} never exercised"
            );
        }
    }
}

/// The transport the controller's GitHub edge gives octocrab: reqwest 0.13 on the shared rustls
/// configuration (octocrab's own hyper client is not built).
fn github_http() -> reqwest013::Client {
    let tls = aci_runner_controller::egress::Tls::default().client_config().unwrap();
    reqwest013::Client::builder().tls_backend_preconfigured(tls).build().unwrap()
}

#[tokio::test]
async fn octocrab_app_installation_jitconfig_list_delete() {
    use octocrab::models::{AppId, InstallationId, RunnerGroupId};
    let g = sim(10.0, GithubSimConfig::default()).await;
    let creds = g.app_credentials();
    let key = octocrab::EncodingKey::from_rsa_pem(creds.private_key_pem.as_bytes()).unwrap();
    let app = octocrab::Octocrab::builder()
        .base_uri(g.url())
        .unwrap()
        .app(AppId(creds.app_id as u64), key)
        .build_with_reqwest(github_http())
        .unwrap();
    let (octo, _token) = app.installation_and_token(InstallationId(1001)).await.unwrap();
    let jit = octo
        .actions()
        .create_org_jit_runner_config("octo-org", "octo-runner", RunnerGroupId(1), vec!["aci".to_string()])
        .send()
        .await
        .unwrap();
    assert_eq!(jit.runner.name, "octo-runner");
    let listed = octo.actions().list_org_self_hosted_runners("octo-org").per_page(50u8).send().await.unwrap();
    let page = listed;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, jit.runner.id);
    let one = octo.actions().get_org_runner("octo-org", jit.runner.id).await.unwrap();
    assert_eq!(one.name, "octo-runner");
    let reg = octo.actions().create_org_runner_registration_token("octo-org").await.unwrap();
    assert!(reg.token.len() > 20);
    octo.actions().delete_org_runner("octo-org", jit.runner.id).await.unwrap();
    assert!(octo.actions().get_org_runner("octo-org", jit.runner.id).await.is_err());
    assert!(g.runners().is_empty());
    // Repo scope through octocrab too.
    let jit = octo
        .actions()
        .create_repo_jit_runner_config(
            "octo-org",
            "octo-repo",
            "repo-runner",
            RunnerGroupId(1),
            vec!["x".to_string()],
        )
        .send()
        .await
        .unwrap();
    octo.actions().delete_repo_runner("octo-org", "octo-repo", jit.runner.id).await.unwrap();
    assert_eq!(g.tokens_minted().get(&1001), Some(&1));
}

fn webhook_validators() -> BTreeMap<String, jsonschema::Validator> {
    let dir = "github/webhooks/payload-schemas/api.github.com";
    let common = [
        "app",
        "deployment",
        "installation-lite",
        "license",
        "organization",
        "repository",
        "user",
        "workflow-job",
        "workflow-step",
        "workflow-step-completed",
        "workflow-step-in_progress",
        "workflow-step-queued",
    ];
    let mut out = BTreeMap::new();
    for action in ["queued", "in_progress", "completed", "waiting"] {
        let schema =
            load_json(&format!("{dir}/workflow_job/{action}.schema.json")).unwrap_or_else(|e| panic!("{e}"));
        let mut opts =
            jsonschema::options().with_draft(jsonschema::Draft::Draft7).should_validate_formats(true);
        for c in common {
            let s = load_json(&format!("{dir}/common/{c}.schema.json")).unwrap_or_else(|e| panic!("{e}"));
            let res = jsonschema::Resource::from_contents(s).unwrap();
            opts = opts.with_resource(format!("json-schema:///common/{c}.schema.json"), res);
        }
        out.insert(action.to_string(), opts.build(&schema).expect("webhook schema builds"));
    }
    out
}

fn check_webhook(v: &BTreeMap<String, jsonschema::Validator>, payload: &Value) {
    let action = payload["action"].as_str().unwrap();
    let errors: Vec<String> =
        v[action].iter_errors(payload).map(|e| format!("{e} at {}", e.instance_path)).collect();
    assert!(errors.is_empty(), "{action} payload invalid: {errors:?}\n{payload:#}");
}

#[tokio::test]
async fn runner_takes_a_job_end_to_end_with_signed_valid_webhooks() {
    let validators = webhook_validators();
    // The validators accept upstream's examples and reject a broken payload.
    for ex in ["queued", "in_progress", "completed.success.with-organization"] {
        let p = load_json(&format!(
            "github/webhooks/payload-examples/api.github.com/workflow_job/{ex}.payload.json"
        ))
        .unwrap();
        check_webhook(&validators, &p);
    }
    let mut broken =
        load_json("github/webhooks/payload-examples/api.github.com/workflow_job/queued.payload.json")
            .unwrap();
    broken["workflow_job"].as_object_mut().unwrap().remove("labels");
    assert!(!validators["queued"].is_valid(&broken));

    // A receiver capturing deliveries.
    let got: Arc<Mutex<Vec<Captured>>> = Arc::default();
    let got2 = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let got = got2.clone();
            async move {
                let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                assert_eq!(h("x-github-event"), "workflow_job");
                // A GitHub App's hook: its App id picks the receiver's secret.
                assert_eq!(h("x-github-hook-installation-target-type"), "integration");
                assert!(h("x-github-hook-installation-target-id").parse::<i64>().is_ok());
                got.lock().unwrap().push((h("x-hub-signature-256"), h("x-github-delivery"), body.to_vec()));
                http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let g = sim(60.0, GithubSimConfig::default()).await;
    g.set_webhook(Some(WebhookTarget { url: hook_url, secret: "s3cret".into() }));
    let c = Conform::new(&g.url());
    let tok = installation_token(&g, &c, 1001).await;
    let r = c.generate_jit("/orgs/{org}", &tok, "pool-abcde").await;
    let rid = r.body["runner"]["id"].as_i64().unwrap();
    let enc = r.body["encoded_jit_config"].as_str().unwrap().to_string();

    // Start the container through the ContainerRuntime trait (no ARM involved).
    let exits: Exits = Arc::default();
    let rt = g.runtime();
    rt.start(
        container("pool-abcde", vec![("ACTIONS_RUNNER_INPUT_JITCONFIG", &enc, true), ("FOO", "bar", false)]),
        notifier(&exits, "pool-abcde"),
    );
    wait_for("runner online", Duration::from_secs(5), || g.runners().iter().any(|r| r.id == rid && r.online))
        .await;
    let env = g.env_records();
    assert_eq!(
        env[0].names,
        vec![("ACTIONS_RUNNER_INPUT_JITCONFIG".to_string(), true), ("FOO".to_string(), false)]
    );

    // A job the runner cannot take (label mismatch) and one it can (60 s simulated = 1 s real).
    g.enqueue_jobs(jobs(&["self-hosted", "gpu"], 5.0, 1)).unwrap();
    let jobs = g.enqueue_jobs(jobs(&["self-hosted", "ACI"], 60.0, 1)).unwrap();
    let job_id = jobs[0].id;
    wait_for("busy", Duration::from_secs(5), || g.runners().iter().any(|r| r.id == rid && r.busy)).await;
    // Busy runners cannot be deleted.
    let r = c.op_id("DELETE", "/orgs/{org}/actions/runners/{runner_id}", rid, &tok, None).await;
    assert_eq!(r.status, 422);
    wait_for("ephemeral exit", Duration::from_secs(10), || !exits.lock().unwrap().is_empty()).await;
    assert_eq!(exits.lock().unwrap().as_slice(), &[("pool-abcde".to_string(), 0)]);
    let jobs = g.jobs();
    let done = jobs.iter().find(|j| j.id == job_id).unwrap();
    assert_eq!((done.status, done.conclusion.as_deref()), (JobStatus::Completed, Some("success")));
    assert_eq!(done.runner_name.as_deref(), Some("pool-abcde"));
    assert!(jobs.iter().any(|j| j.status == JobStatus::Queued), "the gpu job stays queued");
    assert!(g.runners().iter().all(|r| r.id != rid), "GitHub removes an ephemeral runner after its job");

    // Deliveries: queued ×2, in_progress, completed — all valid and correctly signed.
    wait_for("4 deliveries", Duration::from_secs(5), || got.lock().unwrap().len() >= 4).await;
    let got = got.lock().unwrap().clone();
    let mut actions = Vec::new();
    for (sig, delivery, body) in &got {
        assert_eq!(sig, &sign_webhook(b"s3cret", body));
        assert!(!delivery.is_empty());
        let v: Value = serde_json::from_slice(body).unwrap();
        check_webhook(&validators, &v);
        actions.push((v["action"].as_str().unwrap().to_string(), v["workflow_job"]["id"].as_i64().unwrap()));
    }
    assert!(
        actions.contains(&("in_progress".into(), job_id)) && actions.contains(&("completed".into(), job_id)),
        "{actions:?}"
    );
    assert_eq!(actions.iter().filter(|(a, _)| a == "queued").count(), 2);
    // A JIT config is single-use: the same container restarted exits 1.
    rt.start(
        container("pool-abcde", vec![("ACTIONS_RUNNER_INPUT_JITCONFIG", &enc, true)]),
        notifier(&exits, "again"),
    );
    wait_for("second exit", Duration::from_secs(5), || exits.lock().unwrap().len() == 2).await;
    assert_eq!(exits.lock().unwrap()[1], ("again".to_string(), 1));
}

#[test]
fn signature_reproduces_githubs_published_vector() {
    assert_eq!(
        sign_webhook(b"It's a Secret to Everybody", b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

#[tokio::test]
async fn token_mode_persistent_runner_kill_offline_and_invalid_configs() {
    let (g, c, tok) = sim_with_token(60.0, GithubSimConfig::default()).await;
    let r = c.op("POST", "/orgs/{org}/actions/runners/registration-token", &tok, None).await;
    let reg = r.body["token"].as_str().unwrap().to_string();
    let exits: Exits = Arc::default();
    let rt = g.runtime();
    let url = format!("{}/octo-org", g.url());
    rt.start(
        container(
            "persist-1",
            vec![
                ("RUNNER_URL", &url, false),
                ("RUNNER_TOKEN", &reg, true),
                ("RUNNER_NAME", "persist-1", false),
                ("RUNNER_LABELS", "aci,big", false),
                ("RUNNER_GROUP", "aci", false),
                ("RUNNER_EPHEMERAL", "false", false),
            ],
        ),
        notifier(&exits, "persist-1"),
    );
    // Invalid: garbage JIT config, wrong token, nothing at all.
    rt.start(
        container("bad-jit", vec![("ACTIONS_RUNNER_INPUT_JITCONFIG", "bm90IGpzb24=", true)]),
        notifier(&exits, "bad-jit"),
    );
    rt.start(
        container("bad-token", vec![("RUNNER_URL", &url, false), ("RUNNER_TOKEN", "AAAA", true)]),
        notifier(&exits, "bad-token"),
    );
    rt.start(container("nothing", vec![]), notifier(&exits, "nothing"));
    wait_for("online", Duration::from_secs(5), || {
        g.runners().iter().any(|r| r.name == "persist-1" && r.online)
    })
    .await;
    wait_for("3 failures", Duration::from_secs(5), || exits.lock().unwrap().len() == 3).await;
    assert!(exits.lock().unwrap().iter().all(|(_, code)| *code == 1));
    let r = g.runners().into_iter().find(|r| r.name == "persist-1").unwrap();
    assert_eq!(
        (r.group_id, r.ephemeral, r.labels.clone()),
        (2, false, vec!["aci".to_string(), "big".to_string()])
    );

    // Two jobs in sequence on the same persistent runner.
    g.enqueue_jobs(jobs(&["aci", "big"], 10.0, 2)).unwrap();
    wait_for("2 jobs done", Duration::from_secs(5), || {
        g.jobs().iter().filter(|j| j.status == JobStatus::Completed).count() == 2
    })
    .await;
    let r = g.runners().into_iter().find(|r| r.name == "persist-1").unwrap();
    assert_eq!((r.jobs_done, r.online), (2, true));
    assert_eq!(exits.lock().unwrap().len(), 3, "persistent runners keep going");

    // The container is killed mid-job: the runner shows offline, the job fails.
    g.enqueue_jobs(jobs(&["aci"], 600.0, 1)).unwrap();
    wait_for("busy", Duration::from_secs(5), || g.runners().iter().any(|r| r.name == "persist-1" && r.busy))
        .await;
    rt.kill(&container("persist-1", vec![]).group_id);
    let r = g.runners().into_iter().find(|r| r.name == "persist-1").unwrap();
    assert!(!r.online && !r.busy);
    let lt = "/orgs/{org}/actions/runners";
    let l = c.call("GET", lt, "/orgs/octo-org/actions/runners?name=persist-1", &tok, None).await;
    assert_eq!(l.body["runners"][0]["status"], "offline");
    assert!(g.jobs().iter().any(|j| j.conclusion.as_deref() == Some("failure")));
}

#[tokio::test]
async fn offline_ephemeral_runners_disappear_after_a_simulated_day() {
    // 1 real second = 2 simulated days.
    let g = sim(172_800.0, GithubSimConfig::default()).await;
    let c = Conform::new(&g.url());
    // A PAT: an installation token would expire in 20 ms real at this scale.
    let tok = g.app_credentials().pats[0].clone();
    let r = c.generate_jit("/orgs/{org}", &tok, "never-started").await;
    assert_eq!(r.status, 201);
    assert_eq!(g.runners().len(), 1);
    wait_for("gc", Duration::from_secs(3), || g.runners().is_empty()).await;
}

#[tokio::test]
async fn app_auth_rules() {
    let g = sim(10.0, GithubSimConfig::default()).await;
    let c = Conform::new(&g.url());
    let creds = g.app_credentials();
    let at_t = "/app/installations/{installation_id}/access_tokens";
    let now = chrono::Utc::now();
    // Client id works as the issuer too.
    let jwt = mint_app_jwt(&creds.client_id, &creds.private_key_pem, now).unwrap();
    let r = c.call("POST", at_t, "/app/installations/1001/access_tokens", &jwt, None).await;
    assert_eq!(r.status, 201);
    let tok = r.body["token"].as_str().unwrap().to_string();
    // Unknown installation.
    let r = c.call("POST", at_t, "/app/installations/9/access_tokens", &jwt, None).await;
    assert_eq!(r.status, 404);
    // A JWT from another key.
    let other = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let other_pem =
        rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_pem(&other, rsa::pkcs8::LineEnding::LF).unwrap();
    let bad = mint_app_jwt(&creds.app_id.to_string(), &other_pem, now).unwrap();
    let r = c.call("POST", at_t, "/app/installations/1001/access_tokens", &bad, None).await;
    assert_eq!(r.status, 401);
    // exp more than 10 min ahead (minted "in the future").
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(creds.private_key_pem.as_bytes()).unwrap();
    let claims = json!({"iat": now.timestamp() - 60, "exp": now.timestamp() + 20 * 60, "iss": creds.app_id});
    let future =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
            .unwrap();
    let r = c.call("POST", at_t, "/app/installations/1001/access_tokens", &future, None).await;
    assert_eq!(r.status, 401);
    assert!(r.body["message"].as_str().unwrap().contains("too far in the future"));
    // Server clock 3 minutes behind: iat looks like it is in the future.
    g.set_faults(GithubFaults { clock_skew_secs: -180, ..Default::default() });
    let r = c.call("POST", at_t, "/app/installations/1001/access_tokens", &jwt, None).await;
    assert_eq!(r.status, 401);
    g.set_faults(GithubFaults::default());

    // Scopes and permissions.
    let lt = "/orgs/{org}/actions/runners";
    let r = c.call("GET", lt, "/orgs/octo-org/actions/runners", &tok, None).await;
    assert_eq!(r.status, 200);
    let r = c.call("GET", lt, "/orgs/other-org/actions/runners", &tok, None).await;
    assert_eq!(r.status, 404);
    let tok_user = {
        let r = c.call("POST", at_t, "/app/installations/1002/access_tokens", &jwt, None).await;
        r.body["token"].as_str().unwrap().to_string()
    };
    let rl = "/repos/{owner}/{repo}/actions/runners";
    let r = c.call("GET", rl, "/repos/octo-user/hello-world/actions/runners", &tok_user, None).await;
    assert_eq!(r.status, 200);
    let r = c.call("GET", rl, "/repos/octo-user/private-notes/actions/runners", &tok_user, None).await;
    assert_eq!(r.status, 404, "repository not selected for the installation");
    let r = c.call("GET", rl, "/repos/octo-org/octo-repo/actions/runners", &tok_user, None).await;
    assert_eq!(r.status, 404);
    let r = c.call("GET", lt, "/orgs/octo-user/actions/runners", &tok_user, None).await;
    assert_eq!(r.status, 403);
    // Enterprise scope: Apps cannot, PATs can.
    let ent = format!("/enterprises/{}/actions/runners", creds.enterprise);
    let r = reqwest::Client::new().get(format!("{}{ent}", g.url())).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = reqwest::Client::new()
        .get(format!("{}{ent}", g.url()))
        .bearer_auth(&creds.pats[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Installation tokens expire after 1 h simulated (scale 3600: 1 s real).
    let fast = sim(3600.0, GithubSimConfig::default()).await;
    let cf = Conform::new(&fast.url());
    let short = installation_token(&fast, &cf, 1001).await;
    let r = cf.call("GET", lt, "/orgs/octo-org/actions/runners", &short, None).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = cf.call("GET", lt, "/orgs/octo-org/actions/runners", &short, None).await;
    assert_eq!(r.status, 401);
    // No auth at all.
    let r = reqwest::Client::new()
        .get(format!("{}/orgs/octo-org/actions/runners", g.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn missing_permission_is_named() {
    let mut cfg = GithubSimConfig::default();
    cfg.installations[0].permissions.remove("organization_self_hosted_runners");
    let (_g, c, tok) = sim_with_token(10.0, cfg).await;
    let r = c.op("GET", "/orgs/{org}/actions/runners", &tok, None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.headers["x-accepted-github-permissions"], "organization_self_hosted_runners=write");
}

#[tokio::test]
async fn rate_limits_primary_secondary_and_etag_free() {
    let (g, c, tok) = sim_with_token(10.0, GithubSimConfig { rate_limit: 4, ..Default::default() }).await;
    let lt = "/orgs/{org}/actions/runners";
    let p = "/orgs/octo-org/actions/runners";
    let mut remaining = Vec::new();
    let mut etag = String::new();
    for _ in 0..4 {
        let r = c.call("GET", lt, p, &tok, None).await;
        assert_eq!(r.status, 200);
        remaining.push(r.headers["x-ratelimit-remaining"].to_str().unwrap().to_string());
        etag = r.headers["etag"].to_str().unwrap().to_string();
    }
    assert_eq!(remaining, ["3", "2", "1", "0"]);
    let r = c.call("GET", lt, p, &tok, None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.headers["x-ratelimit-remaining"], "0");
    let reset: i64 = r.headers["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!(reset > g.clock().now().timestamp());
    assert!(r.headers.contains_key("retry-after"));
    let rl = g.rate_limits();
    assert_eq!((rl[0].used, rl[0].refused), (4, 1));
    // ETag revalidation on a fresh budget does not consume it.
    g.set_rate_limit(10, 900);
    let r = c.call_h("GET", lt, p, &tok, None, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert_eq!(g.rate_limits()[0].used, 4);

    // Secondary limit: requests per minute.
    g.set_rate_limit(1000, 6);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.call("GET", lt, p, &tok, None).await.status);
    }
    assert_eq!(statuses, [200, 200, 403, 403]);
}

#[tokio::test]
async fn content_creating_requests_have_their_own_secondary_limit() {
    let g = sim(1.0, GithubSimConfig::default()).await;
    let c = Conform::new(&g.url());
    let pat = g.app_credentials().pats[0].clone();
    let mut statuses = Vec::new();
    for i in 0..82 {
        let r = c.generate_jit("/orgs/{org}", &pat, &format!("burst-{i}")).await;
        statuses.push(r.status);
        if r.status == 403 {
            assert!(r.headers.contains_key("retry-after"));
        }
    }
    assert!(statuses[..80].iter().all(|s| *s == 201));
    assert_eq!(&statuses[80..], &[403, 403]);
    // Reads are still fine.
    let r = c.op("GET", "/orgs/{org}/actions/runners", &pat, None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn content_creating_requests_are_also_limited_per_hour() {
    // 60x: a simulated minute is one real second.
    let cfg = GithubSimConfig {
        secondary_writes_per_minute: 1000,
        secondary_writes_per_hour: 5,
        ..Default::default()
    };
    let g = sim(60.0, cfg).await;
    let c = Conform::new(&g.url());
    let pat = g.app_credentials().pats[0].clone();
    let (tmpl, path) = (
        "/orgs/{org}/actions/runners/registration-token",
        "/orgs/octo-org/actions/runners/registration-token",
    );
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(c.call("POST", tmpl, path, &pat, None).await.status);
    }
    assert_eq!(statuses, [201, 201, 201, 201, 201, 403]);
    // A new minute does not help: the hour is full.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = c.call("POST", tmpl, path, &pat, None).await;
    assert_eq!(r.status, 403);
    let retry: i64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 3000 && retry <= 3600, "retry-after {retry} s: the rest of the hour");
    let r = c.op("GET", "/orgs/{org}/actions/runners", &pat, None).await;
    assert_eq!(r.status, 200, "reads are not content-creating");
}

#[tokio::test]
async fn faults_are_reproducible_from_the_seed() {
    async fn run(seed: u64) -> (Vec<u16>, usize) {
        let faults = GithubFaults {
            seed,
            ops: [(
                "list_runners".to_string(),
                GhOpFaults {
                    server_error: 0.3,
                    rate_limited: 0.1,
                    conflict: 0.05,
                    unprocessable: 0.05,
                    hostile: 0.0,
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let g = sim(10.0, GithubSimConfig { faults, ..Default::default() }).await;
        let pat = g.app_credentials().pats[0].clone();
        let http = reqwest::Client::new();
        let mut v = Vec::new();
        for _ in 0..40 {
            let r = list_org_runners(&http, &g, &pat).await;
            v.push(r.status().as_u16());
        }
        let n = g.call_counts()["list_runners"].len();
        (v, n)
    }
    let (a, kinds) = run(7).await;
    let (b, _) = run(7).await;
    let (c, _) = run(8).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(kinds >= 3, "several kinds of answers: {a:?}");
    assert!(a.iter().any(|s| *s >= 500) && a.contains(&200));
}

/// Hostile answers: a read gets 200 with a body that is not JSON or is 9 MiB long, or 503 with
/// headers no integer holds; a write never gets a 2xx (nothing is claimed done that was not).
#[tokio::test]
async fn hostile_answers_break_the_shapes_but_never_claim_a_write() {
    let hostile = GhOpFaults { hostile: 1.0, ..Default::default() };
    let faults = GithubFaults {
        seed: 3,
        ops: ["list_runners", "jitconfig"].iter().map(|op| (op.to_string(), hostile)).collect(),
        ..Default::default()
    };
    let g = sim(10.0, GithubSimConfig { faults, ..Default::default() }).await;
    let pat = g.app_credentials().pats[0].clone();
    let http = reqwest::Client::new();
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = list_org_runners(&http, &g, &pat).await;
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let body = r.bytes().await.unwrap();
        let kind = match status {
            200 if body.len() == 9 << 20 => "oversized",
            200 => {
                assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err(), "a hostile 200 parsed");
                "invalid json"
            }
            503 => {
                let retry = retry.expect("retry-after");
                assert!(retry.parse::<u64>().is_err(), "retry-after {retry} fits an integer");
                "absurd headers"
            }
            s => panic!("unexpected hostile status {s}"),
        };
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    let body = serde_json::json!({"name": "x", "runner_group_id": 1, "labels": ["self-hosted"]});
    for _ in 0..10 {
        let r = http
            .post(format!("{}/orgs/octo-org/actions/runners/generate-jitconfig", g.url()))
            .bearer_auth(&pat)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(!r.status().is_success(), "a write answered {}", r.status());
    }
    assert!(g.runners().is_empty(), "no runner was registered by a hostile answer");
}

#[tokio::test]
async fn runner_faults_crash_and_death_mid_job_and_webhook_drops() {
    let g = sim(60.0, GithubSimConfig::default()).await;
    let exits: Exits = Arc::default();
    let rt = g.runtime();
    let c = Conform::new(&g.url());
    let tok = installation_token(&g, &c, 1001).await;
    let jit = |name: &'static str| {
        let c = &c;
        let tok = &tok;
        async move {
            let r = c.generate_jit("/orgs/{org}", tok, name).await;
            r.body["encoded_jit_config"].as_str().unwrap().to_string()
        }
    };
    // Crash before registration.
    g.set_faults(GithubFaults { seed: 3, crash_before_registration: 1.0, ..Default::default() });
    let e = jit("crashy").await;
    rt.start(
        container("crashy", vec![("ACTIONS_RUNNER_INPUT_JITCONFIG", &e, true)]),
        notifier(&exits, "crashy"),
    );
    wait_for("crash", Duration::from_secs(5), || exits.lock().unwrap().len() == 1).await;
    assert_eq!(exits.lock().unwrap()[0].1, 1);
    assert!(!g.runners().iter().any(|r| r.name == "crashy" && r.online));
    // Death mid-job, with every webhook dropped.
    g.set_webhook(Some(WebhookTarget { url: "http://127.0.0.1:9/none".into(), secret: "x".into() }));
    g.set_faults(GithubFaults {
        seed: 3,
        runner_death_mid_job: 1.0,
        webhook_drop_rate: 1.0,
        ..Default::default()
    });
    let e = jit("mortal").await;
    rt.start(
        container("mortal", vec![("ACTIONS_RUNNER_INPUT_JITCONFIG", &e, true)]),
        notifier(&exits, "mortal"),
    );
    wait_for("online", Duration::from_secs(5), || g.runners().iter().any(|r| r.name == "mortal" && r.online))
        .await;
    g.enqueue_jobs(jobs(&["aci"], 120.0, 1)).unwrap();
    wait_for("death", Duration::from_secs(5), || exits.lock().unwrap().len() == 2).await;
    assert_eq!(exits.lock().unwrap()[1], ("mortal".to_string(), 1));
    let j = &g.jobs()[0];
    assert_eq!((j.status, j.conclusion.as_deref()), (JobStatus::Completed, Some("failure")));
    let r = g.runners().into_iter().find(|r| r.name == "mortal").unwrap();
    assert!(!r.online);
    let d = g.deliveries();
    assert!(d.len() >= 3 && d.iter().all(|d| d.dropped), "{d:?}");
}

// ------------------------------------------------------------------ composed with the ARM simulator

async fn arm_token(sim: &aci_runner_devkit::sim::Simulator) -> String {
    let r = reqwest::Client::new()
        .post(format!("{}/{}/oauth2/v2.0/token", sim.arm.url(), sim.arm.tenant_id()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &sim.arm.client_id()),
            ("client_secret", &sim.arm.client_secret()),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
}

/// Both simulators on one clock running `time_scale` times real time, faults drawn from `seed`.
async fn composed_sim(time_scale: f64, seed: u64) -> aci_runner_devkit::sim::Simulator {
    aci_runner_devkit::sim::start(aci_runner_devkit::sim::SimOptions {
        time_scale,
        seed,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn group_body(restart: &str, env: Value) -> Value {
    runner_group_body("ghcr.io/actions/actions-runner:2.329.0", restart, env)
}

#[tokio::test]
async fn composed_container_group_with_jit_config_comes_online_and_runs_a_job() {
    use aci_runner_controller::github::{Credentials, GithubHub, Scope};
    use secrecy::{ExposeSecret, SecretString};
    let sim = composed_sim(60.0, 11).await;
    let creds = sim.github.app_credentials();
    let hub = GithubHub::default();
    let gh = hub
        .client(
            &sim.github.url(),
            Credentials::App {
                app_id: None,
                client_id: Some(creds.client_id.clone()),
                installation_id: 1001,
                private_key_pem: SecretString::from(creds.private_key_pem.clone()),
            },
        )
        .unwrap();
    let org = Scope::Org("octo-org".into());
    let jit =
        gh.generate_jit_config(&org, "pool-jit01", &["aci".into(), "jit".into()], 1, None).await.unwrap();
    let reg = gh.registration_token(&org).await.unwrap();

    let tok = arm_token(&sim).await;
    let http = reqwest::Client::new();
    let url = |name: &str| {
        format!(
            "{}/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/runners/providers/Microsoft.ContainerInstance/containerGroups/{name}?api-version=2023-05-01",
            sim.arm.url()
        )
    };
    let jit_env =
        json!([{"name": "ACTIONS_RUNNER_INPUT_JITCONFIG", "secureValue": jit.encoded.expose_secret()}]);
    // PUT the group `name` with `restart_policy` and the runner container's `env`.
    let put = |name: &str, restart_policy: &str, env: Value| {
        http.put(url(name)).bearer_auth(&tok).json(&group_body(restart_policy, env)).send()
    };
    let r = put("pool-jit01", "Never", jit_env).await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let token_env = json!([
        {"name": "RUNNER_URL", "value": reg.url},
        {"name": "RUNNER_TOKEN", "secureValue": reg.token.expose_secret()},
        {"name": "RUNNER_NAME", "value": "pool-tok01"},
        {"name": "RUNNER_LABELS", "value": "aci,persistent"},
        {"name": "RUNNER_EPHEMERAL", "value": "false"},
    ]);
    let r = put("pool-tok01", "Always", token_env).await.unwrap();
    assert_eq!(r.status(), 201);

    // Image pull (15 s) + runner start-up (3 s) simulated: about 0.3 s real.
    wait_for("both online", Duration::from_secs(10), || {
        let rs = sim.github.runners();
        rs.iter().any(|r| r.id as u64 == jit.runner_id && r.online)
            && rs.iter().any(|r| r.name == "pool-tok01" && r.online)
    })
    .await;
    let env = sim.github.env_records();
    let jit_rec = env.iter().find(|e| e.group_name == "pool-jit01").unwrap();
    assert_eq!(jit_rec.names, vec![("ACTIONS_RUNNER_INPUT_JITCONFIG".to_string(), true)]);
    let tok_rec = env.iter().find(|e| e.group_name == "pool-tok01").unwrap();
    assert!(tok_rec.names.contains(&("RUNNER_TOKEN".to_string(), true)));
    assert!(tok_rec.names.contains(&("RUNNER_URL".to_string(), false)));

    // A job only the JIT runner can take: it runs, the runner exits 0, the group succeeds.
    let jobs = sim.github.enqueue_jobs(jobs(&["self-hosted", "jit", "linux"], 30.0, 1)).unwrap();
    wait_for("job done", Duration::from_secs(10), || {
        sim.github.jobs().iter().any(|j| j.id == jobs[0].id && j.status == JobStatus::Completed)
    })
    .await;
    let done = sim.github.jobs().into_iter().find(|j| j.id == jobs[0].id).unwrap();
    assert_eq!(done.conclusion.as_deref(), Some("success"));
    assert_eq!(done.runner_name.as_deref(), Some("pool-jit01"));
    wait_for("group succeeded", Duration::from_secs(10), || {
        sim.arm.group("pool-jit01").is_some_and(|g| g.state == "Succeeded")
    })
    .await;
    assert!(!sim.github.runners().iter().any(|r| r.id as u64 == jit.runner_id));

    // Deleting the persistent runner's group: GitHub shows it offline.
    let r = http.delete(url("pool-tok01")).bearer_auth(&tok).send().await.unwrap();
    assert!([200, 202, 204].contains(&r.status().as_u16()));
    wait_for("offline", Duration::from_secs(10), || {
        sim.github.runners().iter().any(|r| r.name == "pool-tok01" && !r.online)
    })
    .await;
    gh.invalidate_runners(&org).await;
    let listed = gh.list_runners(&org).await.unwrap();
    assert!(listed.iter().any(|r| r.name == "pool-tok01" && !r.online()));
}

#[tokio::test]
async fn sim_cli_starts_fast_prints_endpoints_and_writes_app_credentials() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let creds_path = dir.path().join("app.json");
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(aci_runner_devkit::testing::devkit_bin())
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--time-scale",
            "60",
            "--seed",
            "9",
            "--app-credentials-out",
        ])
        .arg(&creds_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    let took = started.elapsed();
    // Under 1 s on an idle machine (typically ~0.2 s for a debug build); generous bound under load.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let ep: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ep["seed"], 9);
    assert_eq!(ep["timeScale"], 60.0);
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&creds_path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(creds["appId"], ep["githubAppId"]);
    assert!(creds["webhookSecret"].as_str().unwrap().len() > 10);
    // The written key works: App JWT → installation token on the printed GitHub URL.
    let jwt = mint_app_jwt(
        creds["clientId"].as_str().unwrap(),
        creds["privateKeyPem"].as_str().unwrap(),
        chrono::Utc::now(),
    )
    .unwrap();
    let gh = ep["githubUrl"].as_str().unwrap();
    let r = reqwest::Client::new()
        .post(format!("{gh}/app/installations/{}/access_tokens", creds["installations"][0]["id"]))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The ARM side answers too (token endpoint printed).
    let r = reqwest::Client::new()
        .post(ep["tokenEndpoint"].as_str().unwrap())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", ep["clientId"].as_str().unwrap()),
            ("client_secret", ep["clientSecret"].as_str().unwrap()),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn restarted_container_re_registers_and_rate_limits_are_controllable_over_http() {
    let (g, c, tok) = sim_with_token(60.0, GithubSimConfig::default()).await;
    let reg = c.op("POST", "/orgs/{org}/actions/runners/registration-token", &tok, None).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{}/octo-org", g.url());
    let env = vec![("RUNNER_URL", url.as_str(), false), ("RUNNER_TOKEN", reg.as_str(), true)];
    let exits: Exits = Arc::default();
    let rt = g.runtime();
    rt.start(container("restarty", env.clone()), notifier(&exits, "restarty"));
    wait_for("online", Duration::from_secs(5), || {
        g.runners().iter().any(|r| r.name == "restarty" && r.online)
    })
    .await;
    let first = g.runners()[0].id;
    // The container restarts (restart policy): the old process is gone, config.sh --replace.
    rt.start(container("restarty", env), notifier(&exits, "restarty"));
    assert!(!g.runners()[0].online, "offline while the new process boots");
    wait_for("re-registered", Duration::from_secs(5), || {
        g.runners().iter().any(|r| r.name == "restarty" && r.online && r.id != first)
    })
    .await;
    assert_eq!(g.runners().len(), 1);
    assert!(exits.lock().unwrap().is_empty());

    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/_sim/github/rate-limits", g.url()))
        .body(r#"{"perHour": 1, "secondaryPerMinute": 100}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let lt = "/orgs/{org}/actions/runners";
    let statuses = [
        c.call("GET", lt, "/orgs/octo-org/actions/runners?page=1", &tok, None).await.status,
        c.call("GET", lt, "/orgs/octo-org/actions/runners?page=2", &tok, None).await.status,
    ];
    // One request was already used by the registration token.
    assert_eq!(statuses, [403, 403]);
}

#[tokio::test]
async fn composed_twenty_jit_groups_each_run_one_job() {
    use aci_runner_controller::github::{Credentials, GithubHub, Scope};
    use secrecy::{ExposeSecret, SecretString};
    let sim = composed_sim(120.0, 5).await;
    let creds = sim.github.app_credentials();
    let clock = sim.clock.clone();
    let hub = GithubHub::new(aci_runner_controller::github::HubConfig {
        clock: Arc::new(move || clock.now()),
        ..Default::default()
    });
    let gh = hub
        .client(
            &sim.github.url(),
            Credentials::App {
                app_id: Some(creds.app_id.to_string()),
                client_id: None,
                installation_id: 1001,
                private_key_pem: SecretString::from(creds.private_key_pem.clone()),
            },
        )
        .unwrap();
    let org = Scope::Org("octo-org".into());
    let tok = arm_token(&sim).await;
    let http = reqwest::Client::new();
    let names: Vec<String> = (0..20).map(|i| format!("bulk-{i:05}")).collect();
    for name in &names {
        let jit = gh.generate_jit_config(&org, name, &["bulk".into()], 1, None).await.unwrap();
        let env =
            json!([{"name": "ACTIONS_RUNNER_INPUT_JITCONFIG", "secureValue": jit.encoded.expose_secret()}]);
        let url = format!(
            "{}/subscriptions/00000000-0000-0000-0000-0000000000bb/resourceGroups/bulk/providers/Microsoft.ContainerInstance/containerGroups/{name}?api-version=2023-05-01",
            sim.arm.url()
        );
        let r = http.put(url).bearer_auth(&tok).json(&group_body("Never", env)).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    sim.github.enqueue_jobs(jobs(&["bulk"], 60.0, 20)).unwrap();
    wait_for("20 jobs done", Duration::from_secs(20), || {
        sim.github.jobs().iter().filter(|j| j.conclusion.as_deref() == Some("success")).count() == 20
    })
    .await;
    let runners_used: BTreeSet<String> =
        sim.github.jobs().into_iter().filter_map(|j| j.runner_name).collect();
    assert_eq!(runners_used.len(), 20, "each ephemeral runner ran exactly one job");
    wait_for("groups succeeded", Duration::from_secs(20), || {
        names.iter().all(|n| sim.arm.group(n).is_some_and(|g| g.state == "Succeeded"))
    })
    .await;
    gh.invalidate_runners(&org).await;
    assert!(gh.list_runners(&org).await.unwrap().is_empty(), "GitHub removed every ephemeral runner");
}
