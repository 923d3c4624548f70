//! HTTP surface of the simulated GitHub: the REST subset (fallback route, parsed like GitHub's
//! router; an `/api/v3` prefix is accepted as on GHES) and the `/_sim/github/...` control API.
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};
use sha2::Digest;

use super::state::{Answer, EnqueueJobs, Need, Principal, ScopeKey, Shared};
use super::{GithubFaults, WebhookTarget};

type S = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sim/github/runners", get(sim_runners))
        .route("/_sim/github/jobs", get(sim_jobs).post(sim_enqueue))
        .route("/_sim/github/calls", get(sim_calls))
        .route("/_sim/github/calls/log", get(sim_call_log))
        .route("/_sim/github/rate-limits", get(sim_rate_limits).put(sim_rate_limits_put))
        .route("/_sim/github/env", get(sim_env))
        .route("/_sim/github/deliveries", get(sim_deliveries))
        .route("/_sim/github/webhook", get(sim_webhook_get).put(sim_webhook_put))
        .route("/_sim/github/faults", get(sim_faults_get).put(sim_faults_put))
        .route("/_sim/github/app", get(sim_app))
        .fallback(api)
        .with_state(shared)
}

// ---------------------------------------------------------------- routing

enum Route {
    AccessToken(i64),
    RateLimit,
    RunnerGroups(ScopeKey),
    CreateRunnerGroup(ScopeKey),
    ListRunners(ScopeKey),
    Jit(ScopeKey),
    RegToken(ScopeKey),
    RemoveToken(ScopeKey),
    GetRunner(ScopeKey, i64),
    DeleteRunner(ScopeKey, i64),
    Deprecation(ScopeKey, String),
    ListRuns(String),
    ListJobs(String, i64),
}

impl Route {
    fn op(&self) -> &'static str {
        match self {
            Route::AccessToken(_) => "access_token",
            Route::RateLimit => "rate_limit",
            Route::RunnerGroups(_) => "runner_groups",
            Route::CreateRunnerGroup(_) => "create_runner_group",
            Route::ListRunners(_) => "list_runners",
            Route::Jit(_) => "jitconfig",
            Route::RegToken(_) => "registration_token",
            Route::RemoveToken(_) => "remove_token",
            Route::GetRunner(..) => "get_runner",
            Route::DeleteRunner(..) => "delete_runner",
            Route::Deprecation(..) => "runner_deprecation",
            Route::ListRuns(_) => "list_runs",
            Route::ListJobs(..) => "list_jobs",
        }
    }
}

fn parse_route(method: &Method, path: &str) -> Option<Route> {
    let path = path.strip_prefix("/api/v3").unwrap_or(path);
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let m = method.clone();
    match segs.as_slice() {
        ["app", "installations", id, "access_tokens"] if m == Method::POST => {
            id.parse().ok().map(Route::AccessToken)
        }
        ["rate_limit"] if m == Method::GET => Some(Route::RateLimit),
        ["orgs", o, rest @ ..] => scoped(m, ScopeKey::Org(o.to_string()), rest),
        ["enterprises", e, rest @ ..] => scoped(m, ScopeKey::Enterprise(e.to_string()), rest),
        ["repos", o, r, rest @ ..] => {
            let full = format!("{o}/{r}");
            match rest {
                ["actions", "runs"] if m == Method::GET => Some(Route::ListRuns(full)),
                ["actions", "runs", id, "jobs"] if m == Method::GET => {
                    id.parse().ok().map(|id| Route::ListJobs(full, id))
                }
                ["actions", "runner-groups", ..] => None,
                _ => scoped(m, ScopeKey::Repo(full), rest),
            }
        }
        _ => None,
    }
}

fn scoped(m: Method, scope: ScopeKey, rest: &[&str]) -> Option<Route> {
    match rest {
        ["actions", "runner-groups"] if m == Method::GET => Some(Route::RunnerGroups(scope)),
        ["actions", "runner-groups"] if m == Method::POST => Some(Route::CreateRunnerGroup(scope)),
        ["actions", "runners"] if m == Method::GET => Some(Route::ListRunners(scope)),
        ["actions", "runners", "generate-jitconfig"] if m == Method::POST => Some(Route::Jit(scope)),
        ["actions", "runners", "registration-token"] if m == Method::POST => Some(Route::RegToken(scope)),
        ["actions", "runners", "remove-token"] if m == Method::POST => Some(Route::RemoveToken(scope)),
        ["actions", "runners", "deprecations", v]
            if m == Method::GET && !matches!(scope, ScopeKey::Enterprise(_)) =>
        {
            Some(Route::Deprecation(scope, v.to_string()))
        }
        ["actions", "runners", id] if m == Method::GET => {
            id.parse().ok().map(|id| Route::GetRunner(scope, id))
        }
        ["actions", "runners", id] if m == Method::DELETE => {
            id.parse().ok().map(|id| Route::DeleteRunner(scope, id))
        }
        _ => None,
    }
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect()
}

/// The requested page of `items` as GitHub lists answer: `{"total_count": n, <key>: [page]}`
/// with a `Link` header when there are other pages; 422 for an invalid `per_page` or `page`.
fn paginate(s: &Shared, items: Vec<Value>, q: &BTreeMap<String, String>, path: &str, key: &str) -> Answer {
    match page_of(s, items, q, path) {
        Ok((page, total, link)) => {
            let a = Answer::ok(200, json!({"total_count": total, key: page}));
            if let Some(l) = link { a.header("link", l) } else { a }
        }
        Err(a) => a,
    }
}

/// Slice `items` into the requested page; returns the page, `total_count` and the `Link` header.
fn page_of(
    s: &Shared,
    items: Vec<Value>,
    q: &BTreeMap<String, String>,
    path: &str,
) -> Result<(Vec<Value>, usize, Option<String>), Answer> {
    let per_page = match q.get("per_page") {
        Some(v) => v.parse::<usize>().map_err(|_| Answer::error(422, "Invalid per_page"))?.clamp(1, 100),
        None => s.cfg().default_per_page.clamp(1, 100),
    };
    let page = match q.get("page") {
        Some(v) => v.parse::<usize>().map_err(|_| Answer::error(422, "Invalid page"))?.max(1),
        None => 1,
    };
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let link_to = |p: usize, rel: &str| {
        let mut qq = q.clone();
        qq.insert("per_page".into(), per_page.to_string());
        qq.insert("page".into(), p.to_string());
        let qs: String =
            url::form_urlencoded::Serializer::new(String::new()).extend_pairs(qq.iter()).finish();
        format!("<{}{}?{}>; rel=\"{rel}\"", s.url, path, qs)
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(link_to(page - 1, "prev"));
    }
    if page < last {
        links.push(link_to(page + 1, "next"));
        links.push(link_to(last, "last"));
    }
    if page > 1 {
        links.push(link_to(1, "first"));
    }
    Ok((slice, total, (!links.is_empty()).then(|| links.join(", "))))
}

/// A hostile answer (see [`super::HostileAnswer`]); 2xx only to a read.
fn hostile(h: super::HostileAnswer, read: bool) -> Response {
    use super::HostileAnswer::*;
    let status = if read { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
    let json = [(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    match h {
        InvalidJson => (status, json, "{\"total_count\": 1, \"runners\": [{\"id\": ").into_response(),
        Oversized => (status, json, vec![b' '; 9 << 20]).into_response(),
        AbsurdHeaders => {
            let absurd = HeaderValue::from_static("99999999999999999999999999");
            let mut resp = encode(Answer::error(503, "Service Unavailable"));
            let h = resp.headers_mut();
            h.insert("retry-after", absurd.clone());
            h.insert("x-ratelimit-reset", absurd);
            h.insert("x-ratelimit-remaining", HeaderValue::from_static("-1"));
            resp
        }
    }
}

fn encode(a: Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match a.body {
        Some(b) => (status, Json(b)).into_response(),
        None => status.into_response(),
    };
    let h = resp.headers_mut();
    for (k, v) in a.headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k), HeaderValue::from_str(&v)) {
            h.append(k, v);
        }
    }
    h.insert("x-github-api-version-selected", HeaderValue::from_static("2022-11-28"));
    resp
}

async fn api(State(s): S, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path_q = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let Some(route) = parse_route(&method, uri.path()) else {
        s.record("unknown", method.as_str(), &path_q, 404, "anonymous");
        return encode(Answer::error(404, "Not Found"));
    };
    let op = route.op();
    let auth = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = match s.authenticate(auth) {
        Ok(p) => p,
        Err(a) => {
            s.record(op, method.as_str(), &path_q, a.status, "anonymous");
            return encode(a);
        }
    };
    let who = principal.key();
    if let Some(h) = s.draw_hostile(op) {
        let resp = hostile(h, method == Method::GET);
        s.record(op, method.as_str(), &path_q, resp.status().as_u16(), &who);
        return resp;
    }
    if let Some(a) = s.draw_fault(op) {
        s.record(op, method.as_str(), &path_q, a.status, &who);
        return encode(a);
    }
    let answer = serve(&s, route, &principal, &uri, &headers, &body);
    s.record(op, method.as_str(), &path_q, answer.status, &who);
    encode(answer)
}

fn serve(s: &Shared, route: Route, p: &Principal, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Answer {
    if let Route::AccessToken(id) = route {
        if *p != Principal::App {
            return Answer::error(401, "A JSON web token could not be decoded");
        }
        if !body.is_empty() && serde_json::from_slice::<Value>(body).is_err() {
            return Answer::error(400, "Problems parsing JSON");
        }
        return s.mint_installation_token(id);
    }
    if *p == Principal::App {
        return Answer::error(401, "A JSON web token cannot be used to access this endpoint");
    }
    if let Route::RateLimit = route {
        // GitHub: "Accessing this endpoint does not count against your REST API rate limit."
        return Answer::ok(200, s.rate_limit_body(p));
    }
    let write = matches!(
        route,
        Route::CreateRunnerGroup(_)
            | Route::Jit(_)
            | Route::RegToken(_)
            | Route::RemoveToken(_)
            | Route::DeleteRunner(..)
    );
    let rl = match s.consume(p, write) {
        Ok(h) => h,
        Err(a) => return a,
    };
    let with = |mut a: Answer| {
        a.headers.extend(rl.iter().cloned());
        a
    };
    let scope = match &route {
        Route::RunnerGroups(sc)
        | Route::CreateRunnerGroup(sc)
        | Route::ListRunners(sc)
        | Route::Jit(sc)
        | Route::RegToken(sc)
        | Route::RemoveToken(sc)
        | Route::GetRunner(sc, _)
        | Route::DeleteRunner(sc, _)
        | Route::Deprecation(sc, _) => Some((sc.clone(), Need::Runners)),
        Route::ListRuns(r) | Route::ListJobs(r, _) => Some((ScopeKey::Repo(r.clone()), Need::ActionsRead)),
        Route::RateLimit | Route::AccessToken(_) => None,
    };
    if let Some((sc, need)) = &scope
        && let Err(a) = s.authorize(p, sc, *need)
    {
        return with(a);
    }
    let q = query_map(uri);
    let json_body = || -> Result<Value, Answer> {
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(body).map_err(|_| Answer::error(400, "Problems parsing JSON"))
    };
    let answer = match route {
        Route::RateLimit => Answer::ok(200, s.rate_limit_body(p)),
        Route::RunnerGroups(sc) => {
            let groups = s.runner_groups(&sc);
            paginate(s, groups, &q, uri.path(), "runner_groups")
        }
        Route::CreateRunnerGroup(sc) => match json_body() {
            Ok(b) => match b.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => s.create_runner_group(&sc, n),
                _ => Answer::error(422, "Validation Failed"),
            },
            Err(a) => a,
        },
        Route::ListRunners(sc) => {
            let runners = s.list_runners(&sc, q.get("name").map(String::as_str));
            paginate(s, runners, &q, uri.path(), "runners")
        }
        Route::Jit(sc) => match json_body() {
            Ok(b) => s.generate_jitconfig(&sc, &b),
            Err(a) => a,
        },
        Route::RegToken(sc) => s.runner_token(&sc, false),
        Route::RemoveToken(sc) => s.runner_token(&sc, true),
        Route::GetRunner(sc, id) => s.get_runner(&sc, id),
        Route::DeleteRunner(sc, id) => s.delete_runner(&sc, id),
        Route::Deprecation(_, v) => match s.cfg().deprecated_runner_versions.get(&v) {
            Some(at) => Answer::ok(
                200,
                json!({"runner_version": v, "runtime_deprecates_at": super::payloads::ts(*at)}),
            ),
            None => Answer::error(404, "Not Found"),
        },
        Route::ListRuns(repo) => {
            let runs = s.list_runs(&repo, q.get("status").map(String::as_str));
            paginate(s, runs, &q, uri.path(), "workflow_runs")
        }
        Route::ListJobs(repo, run) => match s.list_run_jobs(&repo, run) {
            None => Answer::error(404, "Not Found"),
            Some(jobs) => paginate(s, jobs, &q, uri.path(), "jobs"),
        },
        Route::AccessToken(_) => Answer::error(404, "Not Found"),
    };
    // Conditional GETs: a matching ETag answers 304, which does not count against the limit.
    if answer.status == 200
        && let Some(b) = &answer.body
    {
        let digest = sha2::Sha256::digest(format!("{}|{b}", p.key()));
        let etag = format!("W/\"{}\"", &hex::encode(digest)[..40]);
        let inm = headers.get(http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).unwrap_or("");
        if inm.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            let mut a = Answer::empty(304).header("etag", etag);
            a.headers.extend(s.refund(p));
            return a;
        }
        let mut a = with(answer);
        a.headers.push(("etag".into(), etag));
        return a;
    }
    with(answer)
}

// ---------------------------------------------------------------- /_sim/github

async fn sim_runners(State(s): S) -> Response {
    Json(s.runners()).into_response()
}

async fn sim_jobs(State(s): S) -> Response {
    Json(s.jobs()).into_response()
}

async fn sim_enqueue(State(s): S, body: Bytes) -> Response {
    let req: EnqueueJobs = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({"message": e.to_string()}))).into_response(),
    };
    match s.enqueue(req) {
        Ok(jobs) => (StatusCode::CREATED, Json(jobs)).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"message": e}))).into_response(),
    }
}

async fn sim_calls(State(s): S) -> Response {
    Json(json!({"counts": s.call_counts(), "notModified": s.not_modified_counts(), "tokensMinted": s.tokens_minted()}))
        .into_response()
}

async fn sim_call_log(State(s): S) -> Response {
    Json(s.calls()).into_response()
}

async fn sim_rate_limits(State(s): S) -> Response {
    Json(s.rate_limits()).into_response()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LimitsPut {
    per_hour: u64,
    secondary_per_minute: u64,
}

async fn sim_rate_limits_put(State(s): S, body: Bytes) -> Response {
    match serde_json::from_slice::<LimitsPut>(&body) {
        Ok(l) => {
            s.set_rate_limit(l.per_hour, l.secondary_per_minute);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"message": e.to_string()}))).into_response(),
    }
}

async fn sim_env(State(s): S) -> Response {
    Json(s.env_records()).into_response()
}

async fn sim_deliveries(State(s): S) -> Response {
    Json(s.deliveries()).into_response()
}

async fn sim_webhook_get(State(s): S) -> Response {
    Json(json!({"url": s.webhook_target().map(|t| t.url)})).into_response()
}

async fn sim_webhook_put(State(s): S, body: Bytes) -> Response {
    match serde_json::from_slice::<Option<WebhookTarget>>(&body) {
        Ok(t) => {
            s.set_webhook(t);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"message": e.to_string()}))).into_response(),
    }
}

async fn sim_faults_get(State(s): S) -> Response {
    Json(s.cfg().faults).into_response()
}

async fn sim_faults_put(State(s): S, body: Bytes) -> Response {
    match serde_json::from_slice::<GithubFaults>(&body) {
        Ok(f) => {
            s.set_faults(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"message": e.to_string()}))).into_response(),
    }
}

async fn sim_app(State(s): S) -> Response {
    Json(s.app_credentials()).into_response()
}
