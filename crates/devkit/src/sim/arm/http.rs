//! HTTP surface: ARM container groups (fallback route, parsed like ARM does, case-insensitively),
//! the Entra token and managed-identity endpoints, and the `/_sim/arm/...` control API.
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::{Answer, Shared};
use super::{FaultConfig, FederatedAssertionClaims, Quotas, SUPPORTED_API_VERSIONS};

type S = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/metadata/identity/oauth2/token", get(managed_identity))
        .route("/_sim/arm/groups", get(sim_groups))
        .route("/_sim/arm/groups/{name}/exit", post(sim_exit))
        .route("/_sim/arm/calls", get(sim_calls))
        .route("/_sim/arm/env", get(sim_env_all))
        .route("/_sim/arm/env/{name}", get(sim_env))
        .route("/_sim/arm/faults", get(sim_faults_get).put(sim_faults_put))
        .route("/_sim/arm/quotas", get(sim_quotas_get).put(sim_quotas_put))
        .route("/_sim/arm/credentials", get(sim_credentials))
        .route("/_sim/arm/assertion", post(sim_assertion))
        .fallback(arm)
        .with_state(shared)
}

// ---------------------------------------------------------------- Entra ID

fn oauth_error(e: super::entra::OAuthError, now: chrono::DateTime<chrono::Utc>) -> Response {
    let code: u32 = e
        .description
        .strip_prefix("AADSTS")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({
        "error": e.error,
        "error_description": e.description,
        "error_codes": [code],
        "timestamp": now.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
    });
    (status, Json(body)).into_response()
}

async fn token(State(s): S, Path(tenant): Path<String>, body: Bytes) -> Response {
    let path = format!("/{tenant}/oauth2/v2.0/token");
    if let Some(a) = s.draw_fault("token") {
        s.record("token", "POST", &path, a.status, a.code.clone());
        return encode(a, &HeaderMap::new());
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let cfg = s.cfg();
    let res = s.entra.token(&cfg, &s.clock, &tenant, &form);
    match res {
        Ok(t) => {
            s.record("token", "POST", &path, 200, None);
            tracing::debug!(resource = %t.resource, "issued access token");
            Json(json!({
                "token_type": "Bearer",
                "expires_in": t.expires_in_real,
                "ext_expires_in": t.expires_in_real,
                "access_token": t.token,
            }))
            .into_response()
        }
        Err(e) => {
            s.record("token", "POST", &path, e.status, Some(e.error.to_string()));
            oauth_error(e, s.clock.now())
        }
    }
}

#[derive(Deserialize)]
struct MiQuery {
    resource: Option<String>,
    client_id: Option<String>,
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

async fn managed_identity(State(s): S, headers: HeaderMap, Query(q): Query<MiQuery>) -> Response {
    let path = "/metadata/identity/oauth2/token";
    let has_metadata =
        headers.get("metadata").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !has_metadata || q.api_version.is_none() {
        s.record("managedIdentity", "GET", path, 400, Some("invalid_request".into()));
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "Required metadata header not specified or api-version missing"})),
        )
            .into_response();
    }
    let cfg = s.cfg();
    let resource = q.resource.unwrap_or_default();
    match s.entra.managed_identity(&cfg, &s.clock, &resource, q.client_id.as_deref()) {
        Ok(t) => {
            s.record("managedIdentity", "GET", path, 200, None);
            Json(json!({
                "access_token": t.token,
                "client_id": q.client_id.unwrap_or_else(|| "system-assigned".into()),
                "expires_in": t.expires_in_real.to_string(),
                "expires_on": t.expires_on.to_string(),
                "ext_expires_in": t.expires_in_real.to_string(),
                "not_before": (t.expires_on - cfg.token_lifetime_secs as i64).to_string(),
                "resource": t.resource,
                "token_type": "Bearer",
            }))
            .into_response()
        }
        Err(e) => {
            s.record("managedIdentity", "GET", path, e.status, Some(e.error.to_string()));
            oauth_error(e, s.clock.now())
        }
    }
}

// ---------------------------------------------------------------- ARM

#[derive(Debug)]
enum Route {
    Item {
        sub: String,
        rg: String,
        name: String,
    },
    Action {
        sub: String,
        rg: String,
        name: String,
        action: String,
    },
    /// `.../containerGroups/{name}/containers/{container}/logs`.
    Logs {
        sub: String,
        rg: String,
        name: String,
        container: String,
    },
    List {
        sub: String,
        rg: String,
    },
    ListAll {
        sub: String,
    },
    Operation {
        sub: String,
        op: String,
    },
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn parse_route(path: &str) -> Option<Route> {
    let seg: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    let provider =
        |i: usize| s.len() > i + 1 && eq(s[i], "providers") && eq(s[i + 1], "Microsoft.ContainerInstance");
    if s.len() < 2 || !eq(s[0], "subscriptions") {
        return None;
    }
    let sub = s[1].to_string();
    if provider(2) {
        return match &s[4..] {
            [cg] if eq(cg, "containerGroups") => Some(Route::ListAll { sub }),
            [l, _loc, o, op] if eq(l, "locations") && eq(o, "operations") => {
                Some(Route::Operation { sub, op: op.to_string() })
            }
            _ => None,
        };
    }
    if s.len() >= 7 && eq(s[2], "resourceGroups") && provider(4) && eq(s[6], "containerGroups") {
        let rg = s[3].to_string();
        return match &s[7..] {
            [] => Some(Route::List { sub, rg }),
            [name] => Some(Route::Item { sub, rg, name: name.to_string() }),
            [name, action] => {
                Some(Route::Action { sub, rg, name: name.to_string(), action: action.to_string() })
            }
            [name, c, container, l] if eq(c, "containers") && eq(l, "logs") => {
                Some(Route::Logs { sub, rg, name: name.to_string(), container: container.to_string() })
            }
            _ => None,
        };
    }
    None
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(s.replace('+', "%2B").as_bytes())
        .next()
        .map(|(k, v)| if v.is_empty() { k.into_owned() } else { format!("{k}={v}") })
        .unwrap_or_default()
}

fn op_name(route: Option<&Route>, method: &Method) -> &'static str {
    match (route, method) {
        (Some(Route::Item { .. }), &Method::GET) => "get",
        (Some(Route::Item { .. }), &Method::PUT) => "create",
        (Some(Route::Item { .. }), &Method::DELETE) => "delete",
        (Some(Route::Item { .. }), &Method::PATCH) => "update",
        (Some(Route::Action { action, .. }), _) if eq(action, "start") => "start",
        (Some(Route::Action { action, .. }), _) if eq(action, "restart") => "restart",
        (Some(Route::Action { action, .. }), _) if eq(action, "stop") => "stop",
        (Some(Route::Action { .. }), _) => "action",
        (Some(Route::Logs { .. }), _) => "logs",
        (Some(Route::List { .. }), _) => "list",
        (Some(Route::ListAll { .. }), _) => "listAll",
        (Some(Route::Operation { .. }), _) => "operation",
        _ => "other",
    }
}

fn action_for(route: &Route, method: &Method) -> &'static str {
    match (route, method) {
        (Route::Item { .. }, &Method::PUT | &Method::PATCH) => {
            "Microsoft.ContainerInstance/containerGroups/write"
        }
        (Route::Item { .. }, &Method::DELETE) => "Microsoft.ContainerInstance/containerGroups/delete",
        (Route::Action { action, .. }, _) if eq(action, "start") => {
            "Microsoft.ContainerInstance/containerGroups/start/action"
        }
        (Route::Action { action, .. }, _) if eq(action, "restart") => {
            "Microsoft.ContainerInstance/containerGroups/restart/action"
        }
        (Route::Action { .. }, _) => "Microsoft.ContainerInstance/containerGroups/stop/action",
        (Route::Logs { .. }, _) => "Microsoft.ContainerInstance/containerGroups/containers/logs/read",
        _ => "Microsoft.ContainerInstance/containerGroups/read",
    }
}

fn scope_of(route: &Route) -> String {
    match route {
        Route::Item { sub, rg, name }
        | Route::Action { sub, rg, name, .. }
        | Route::Logs { sub, rg, name, .. } => {
            format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups/{name}"
            )
        }
        Route::List { sub, rg } => format!("/subscriptions/{sub}/resourceGroups/{rg}"),
        Route::ListAll { sub } | Route::Operation { sub, .. } => format!("/subscriptions/{sub}"),
    }
}

fn sub_of(route: &Route) -> &str {
    match route {
        Route::Item { sub, .. }
        | Route::Action { sub, .. }
        | Route::Logs { sub, .. }
        | Route::List { sub, .. }
        | Route::ListAll { sub }
        | Route::Operation { sub, .. } => sub,
    }
}

/// A request ARM has received is carried out even when its client goes away before the answer
/// (a controller killed or timing out during an injected latency): the handling runs in its own
/// task, which the connection's end does not cancel, as a real PUT or DELETE that reached ARM
/// takes effect whether or not anyone reads its answer.
async fn arm(State(s): S, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let task = tokio::spawn(arm_received(s, method, uri, headers, body));
    match task.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "simulated ARM request handler failed");
            http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn arm_received(s: Arc<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let route = parse_route(&path);
    let op = op_name(route.as_ref(), &method);
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let latency = s.cfg().faults.ops.get(op).map(|f| f.latency_ms).unwrap_or(0);
    if latency > 0 {
        tokio::time::sleep(s.clock.real(std::time::Duration::from_millis(latency))).await;
    }
    let answer = handle(&s, &method, route, &query, &headers, &body, &path);
    let full = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| path.clone());
    let host = headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    s.record_from(op, method.as_str(), &full, answer.status, answer.code.clone(), host);
    encode(answer, &headers)
}

fn handle(
    s: &Arc<Shared>,
    method: &Method,
    route: Option<Route>,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
) -> Answer {
    let Some(route) = route else {
        return Answer::error(
            404,
            "NotFound",
            format!("The path '{path}' is not served by the simulated Azure Resource Manager."),
        );
    };
    let cfg = s.cfg();
    // Authentication.
    let auth = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let www = format!(
        "Bearer authorization_uri=\"{}/{}\", error=\"invalid_token\", error_description=\"The authentication failed because of missing 'Authorization' header.\"",
        s.url, cfg.tenant_id
    );
    let Some(token) = auth.and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
    else {
        return Answer::error(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        )
        .header("WWW-Authenticate", www);
    };
    let mut audiences = cfg.arm_audiences.clone();
    audiences.push(s.url.clone());
    let claims = match s.entra.verify_access(token.trim(), &s.clock, &audiences) {
        Ok(c) => c,
        Err((code, msg)) => return Answer::error(401, code, msg).header("WWW-Authenticate", www),
    };
    // api-version.
    let Some(api_version) = query.iter().find(|(k, _)| k == "api-version").map(|(_, v)| v.clone()) else {
        return Answer::error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    };
    if !SUPPORTED_API_VERSIONS.contains(&api_version.as_str()) {
        return Answer::error(
            400,
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for location 'global' and API version '{api_version}' for type 'containerGroups'. The supported api-versions are '{}'.",
                SUPPORTED_API_VERSIONS.join(", ")
            ),
        );
    }
    let sub = sub_of(&route).to_string();
    if !cfg.subscriptions.is_empty() && !cfg.subscriptions.iter().any(|x| eq(x, &sub)) {
        return Answer::error(
            404,
            "SubscriptionNotFound",
            format!("The subscription '{sub}' could not be found."),
        );
    }
    // Authorization (role assignments).
    let action = action_for(&route, method);
    if cfg.faults.denied_actions.iter().any(|d| d.client_id == claims.appid && eq(&d.action, action)) {
        return Answer::error(
            403,
            "AuthorizationFailed",
            format!(
                "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
                claims.appid,
                claims.oid,
                scope_of(&route)
            ),
        );
    }
    // ARM throttling.
    let write = *method != Method::GET;
    let (rl_header, remaining) = match s.take_arm_token(&sub, write) {
        Ok(x) => x,
        Err(a) => return a,
    };
    let op = op_name(Some(&route), method);
    if let Some(a) = s.draw_fault(op) {
        return a.header(&rl_header, remaining.to_string());
    }
    let answer = match (&route, method) {
        (Route::Item { sub, rg, name }, &Method::GET) => s.get(sub, rg, name),
        (Route::Item { sub, rg, name }, &Method::PUT) => match serde_json::from_slice::<Value>(body) {
            Ok(v) => s.create_or_update(sub, rg, name, &v, &api_version),
            Err(e) => Answer::error(
                400,
                "InvalidRequestContent",
                format!("The request content was invalid and could not be deserialized: '{e}'."),
            ),
        },
        (Route::Item { sub, rg, name }, &Method::DELETE) => s.delete(sub, rg, name, &api_version),
        (Route::Item { sub, rg, name }, &Method::PATCH) => match serde_json::from_slice::<Value>(body) {
            Ok(v) => s.update_tags(sub, rg, name, &v),
            Err(e) => Answer::error(
                400,
                "InvalidRequestContent",
                format!("The request content was invalid and could not be deserialized: '{e}'."),
            ),
        },
        (Route::Action { sub, rg, name, action }, &Method::POST) if eq(action, "start") => {
            s.start_group(sub, rg, name, &api_version)
        }
        (Route::Action { sub, rg, name, action }, &Method::POST) if eq(action, "restart") => {
            s.restart_group(sub, rg, name)
        }
        (Route::Action { sub, rg, name, action }, &Method::POST) if eq(action, "stop") => {
            s.stop(sub, rg, name)
        }
        (Route::Logs { sub, rg, name, container }, &Method::GET) => {
            let tail = query.iter().find(|(k, _)| k == "tail").map(|(_, v)| v.parse::<i64>());
            let timestamps = query.iter().find(|(k, _)| k == "timestamps").map(|(_, v)| v.parse::<bool>());
            match (tail.transpose(), timestamps.transpose()) {
                (Ok(tail), Ok(timestamps)) => s.logs(
                    sub,
                    rg,
                    name,
                    container,
                    tail.map(|t| usize::try_from(t.max(0)).unwrap_or(0)),
                    timestamps.unwrap_or(false),
                ),
                _ => Answer::error(
                    400,
                    "InvalidParameter",
                    "The 'tail' parameter must be an integer and 'timestamps' a boolean.",
                ),
            }
        }
        (Route::List { sub, rg }, &Method::GET) => {
            s.list(sub, Some(rg), path, &api_version, skip_token(query))
        }
        (Route::ListAll { sub }, &Method::GET) => s.list(sub, None, path, &api_version, skip_token(query)),
        (Route::Operation { op, .. }, &Method::GET) => match s.operation(op) {
            Some(v) => Answer::ok(200, v),
            None => Answer::error(404, "OperationNotFound", format!("The operation '{op}' was not found.")),
        },
        (Route::Action { action, .. }, _) => {
            Answer::error(404, "NotFound", format!("The action '{action}' is not served by the simulator."))
        }
        _ => Answer::error(
            405,
            "HttpMethodNotAllowed",
            format!("The HTTP method '{method}' is not supported for this resource."),
        ),
    };
    answer.header(&rl_header, remaining.to_string())
}

fn skip_token(query: &[(String, String)]) -> usize {
    query.iter().find(|(k, _)| k == "$skiptoken").and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

fn encode(a: Answer, req_headers: &HeaderMap) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match a.body {
        Some(b) => (status, Json(b)).into_response(),
        None => status.into_response(),
    };
    let h = resp.headers_mut();
    let correlation = req_headers
        .get("x-ms-correlation-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    for (k, v) in [
        ("x-ms-request-id".to_string(), uuid::Uuid::new_v4().to_string()),
        ("x-ms-correlation-request-id".to_string(), correlation),
    ]
    .into_iter()
    .chain(a.headers)
    {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str()))
        {
            h.insert(name, value);
        }
    }
    if let Some(Ok(v)) = a.code.as_deref().map(HeaderValue::try_from) {
        h.insert("x-ms-error-code", v);
    }
    resp
}

// ---------------------------------------------------------------- /_sim/arm

async fn sim_groups(State(s): S) -> Response {
    Json(s.groups()).into_response()
}

#[derive(Deserialize)]
struct ExitQuery {
    code: Option<i32>,
}

async fn sim_exit(State(s): S, Path(name): Path<String>, Query(q): Query<ExitQuery>) -> Response {
    if s.exit_container_by_name(&name, q.code.unwrap_or(0)) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"error": format!("no running container in group '{name}'")})))
            .into_response()
    }
}

async fn sim_calls(State(s): S) -> Response {
    Json(json!({
        "calls": s.calls(),
        "counts": s.call_counts(),
        "throttled": s.throttled_count(),
        "quotaRejections": s.quota_rejections(),
        "createsAccepted": s.creates_accepted(),
    }))
    .into_response()
}

async fn sim_env_all(State(s): S) -> Response {
    Json(s.env_records()).into_response()
}

async fn sim_env(State(s): S, Path(name): Path<String>) -> Response {
    let v: Vec<Value> = s
        .env_names(&name)
        .into_iter()
        .map(|(c, n, secure)| json!({"container": c, "name": n, "secure": secure}))
        .collect();
    Json(v).into_response()
}

async fn sim_faults_get(State(s): S) -> Response {
    Json(s.cfg().faults).into_response()
}

async fn sim_faults_put(State(s): S, Json(f): Json<FaultConfig>) -> Response {
    s.set_faults(f);
    StatusCode::NO_CONTENT.into_response()
}

async fn sim_quotas_get(State(s): S) -> Response {
    Json(s.cfg().quotas).into_response()
}

async fn sim_quotas_put(State(s): S, Json(q): Json<Quotas>) -> Response {
    s.set_quotas(q);
    StatusCode::NO_CONTENT.into_response()
}

async fn sim_credentials(State(s): S) -> Response {
    let cfg = s.cfg();
    Json(json!({
        "tenantId": cfg.tenant_id,
        "clientId": cfg.client_id,
        "clientSecret": cfg.client_secret,
        "authorityHost": s.url,
        "armEndpoint": s.url,
        "managedIdentityEndpoint": format!("{}/metadata/identity/oauth2/token", s.url),
        "federatedCredentials": cfg.federated_credentials,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssertionReq {
    issuer: Option<String>,
    subject: Option<String>,
    audience: Option<String>,
    lifetime_secs: Option<i64>,
}

async fn sim_assertion(State(s): S, Json(r): Json<AssertionReq>) -> Response {
    let cfg = s.cfg();
    let fc = cfg.federated_credentials.first();
    let now = s.clock.now().timestamp();
    let claims = FederatedAssertionClaims {
        iss: r.issuer.or_else(|| fc.map(|f| f.issuer.clone())).unwrap_or_default(),
        sub: r.subject.or_else(|| fc.map(|f| f.subject.clone())).unwrap_or_default(),
        aud: r
            .audience
            .or_else(|| fc.map(|f| f.audience.clone()))
            .unwrap_or_else(|| super::FEDERATED_AUDIENCE.into()),
        iat: now,
        nbf: now,
        exp: now + r.lifetime_secs.unwrap_or(3600),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    Json(json!({"assertion": s.entra.sign_assertion(&claims)})).into_response()
}
