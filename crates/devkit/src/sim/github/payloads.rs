//! JSON bodies the simulated GitHub serves and sends, shaped per the REST description
//! (`runners-api.2022-11-28.json`) and the octokit `workflow_job` webhook schemas.
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::state::{JobRecord, JobStatus, RunnerRecord};

/// URLs of the simulated service: `api` for REST URLs, `html` for web URLs.
#[derive(Clone, Debug)]
pub struct Urls {
    pub api: String,
    pub html: String,
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn node_id(kind: &str, id: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("0{kind}{id}"))
}

/// Stable numeric id for an account or repository name.
pub fn id_of(name: &str) -> i64 {
    let mut h: i64 = 1_000_003;
    for b in name.bytes() {
        h = (h.wrapping_mul(31).wrapping_add(b as i64)) & 0x3fff_ffff;
    }
    h + 1000
}

/// `simple-user` (REST) / `user` (webhooks).
pub fn user(u: &Urls, login: &str, kind: &str) -> Value {
    let id = id_of(login);
    let a = &u.api;
    json!({
        "login": login, "id": id, "node_id": node_id("User", id),
        "avatar_url": format!("{}/avatars/{login}", u.html), "gravatar_id": "",
        "url": format!("{a}/users/{login}"), "html_url": format!("{}/{login}", u.html),
        "followers_url": format!("{a}/users/{login}/followers"),
        "following_url": format!("{a}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{a}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{a}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{a}/users/{login}/subscriptions"),
        "organizations_url": format!("{a}/users/{login}/orgs"),
        "repos_url": format!("{a}/users/{login}/repos"),
        "events_url": format!("{a}/users/{login}/events{{/privacy}}"),
        "received_events_url": format!("{a}/users/{login}/received_events"),
        "type": kind, "site_admin": false,
    })
}

/// `organization` (webhooks).
pub fn organization(u: &Urls, login: &str) -> Value {
    let id = id_of(login);
    let a = &u.api;
    json!({
        "login": login, "id": id, "node_id": node_id("Organization", id),
        "url": format!("{a}/orgs/{login}"), "repos_url": format!("{a}/orgs/{login}/repos"),
        "events_url": format!("{a}/orgs/{login}/events"), "hooks_url": format!("{a}/orgs/{login}/hooks"),
        "issues_url": format!("{a}/orgs/{login}/issues"),
        "members_url": format!("{a}/orgs/{login}/members{{/member}}"),
        "public_members_url": format!("{a}/orgs/{login}/public_members{{/member}}"),
        "avatar_url": format!("{}/avatars/{login}", u.html), "description": null,
    })
}

/// A repository object valid as REST `minimal-repository`/`repository` and webhook `repository`.
pub fn repository(u: &Urls, owner: &str, owner_kind: &str, name: &str, created: DateTime<Utc>) -> Value {
    let full = format!("{owner}/{name}");
    let id = id_of(&full);
    let r = format!("{}/repos/{full}", u.api);
    let html = format!("{}/{full}", u.html);
    let mut a = json!({
        "id": id, "node_id": node_id("Repository", id), "name": name, "full_name": full,
        "private": true, "owner": user(u, owner, owner_kind), "html_url": html, "description": null,
        "fork": false, "url": r,
    });
    const SUFFIXES: &[(&str, &str)] = &[
        ("forks_url", "/forks"),
        ("keys_url", "/keys{/key_id}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("teams_url", "/teams"),
        ("hooks_url", "/hooks"),
        ("issue_events_url", "/issues/events{/number}"),
        ("events_url", "/events"),
        ("assignees_url", "/assignees{/user}"),
        ("branches_url", "/branches{/branch}"),
        ("tags_url", "/tags"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("trees_url", "/git/trees{/sha}"),
        ("statuses_url", "/statuses/{sha}"),
        ("languages_url", "/languages"),
        ("stargazers_url", "/stargazers"),
        ("contributors_url", "/contributors"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("commits_url", "/commits{/sha}"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("comments_url", "/comments{/number}"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("contents_url", "/contents/{+path}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("merges_url", "/merges"),
        ("archive_url", "/{archive_format}{/ref}"),
        ("downloads_url", "/downloads"),
        ("issues_url", "/issues{/number}"),
        ("pulls_url", "/pulls{/number}"),
        ("milestones_url", "/milestones{/number}"),
        ("notifications_url", "/notifications{?since,all,participating}"),
        ("labels_url", "/labels{/name}"),
        ("releases_url", "/releases{/id}"),
        ("deployments_url", "/deployments"),
    ];
    if let Some(o) = a.as_object_mut() {
        for (k, suffix) in SUFFIXES {
            o.insert(k.to_string(), Value::String(format!("{r}{suffix}")));
        }
    }
    let b = json!({
        "created_at": ts(created), "updated_at": ts(created), "pushed_at": ts(created),
        "git_url": format!("git://sim.invalid/{full}.git"), "ssh_url": format!("git@sim.invalid:{full}.git"),
        "clone_url": format!("{html}.git"), "svn_url": html, "homepage": null, "size": 1,
        "stargazers_count": 0, "watchers_count": 0, "language": null, "has_issues": true,
        "has_projects": true, "has_downloads": true, "has_wiki": true, "has_pages": false,
        "forks_count": 0, "mirror_url": null, "archived": false, "open_issues_count": 0,
        "license": null, "forks": 0, "open_issues": 0, "watchers": 0, "default_branch": "main",
        "is_template": false, "web_commit_signoff_required": false, "topics": [],
        "visibility": "private", "custom_properties": {},
    });
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// REST `runner`.
pub fn runner(r: &RunnerRecord) -> Value {
    let mut labels: Vec<Value> = Vec::new();
    for (i, l) in r.read_only_labels().iter().enumerate() {
        labels.push(json!({"id": i as i64 + 1, "name": l, "type": "read-only"}));
    }
    for l in &r.labels {
        labels.push(json!({"id": super::payloads::id_of(l) % 100_000 + 10, "name": l, "type": "custom"}));
    }
    json!({
        "id": r.id, "runner_group_id": r.group_id, "name": r.name, "os": r.os,
        "status": if r.online { "online" } else { "offline" }, "busy": r.busy,
        "ephemeral": r.ephemeral, "labels": labels, "version": r.version,
    })
}

fn job_common(u: &Urls, j: &JobRecord) -> Value {
    let r = format!("{}/repos/{}", u.api, j.repo);
    json!({
        "id": j.id, "run_id": j.run_id, "run_url": format!("{r}/actions/runs/{}", j.run_id),
        "run_attempt": 1, "node_id": node_id("CheckRun", j.id), "head_sha": j.head_sha,
        "url": format!("{r}/actions/jobs/{}", j.id),
        "html_url": format!("{}/{}/actions/runs/{}/job/{}", u.html, j.repo, j.run_id, j.id),
        "status": j.status.as_str(),
        "conclusion": j.conclusion,
        "created_at": ts(j.created_at),
        "started_at": ts(j.started_at.unwrap_or(j.created_at)),
        "completed_at": j.completed_at.map(ts),
        "name": j.name, "steps": [],
        "check_run_url": format!("{r}/check-runs/{}", j.id),
        "labels": j.labels,
        "runner_id": j.runner_id, "runner_name": j.runner_name,
        "runner_group_id": j.runner_group_id, "runner_group_name": j.runner_group_name,
        "workflow_name": j.workflow_name, "head_branch": "main",
    })
}

/// REST `job`.
pub fn job(u: &Urls, j: &JobRecord) -> Value {
    job_common(u, j)
}

/// REST `workflow-run` for a run made of `jobs` (all of the same run).
pub fn workflow_run(u: &Urls, owner_kind: &str, jobs: &[&JobRecord]) -> Option<Value> {
    let first = jobs.first()?;
    let (owner, name) = first.repo.split_once('/')?;
    let r = format!("{}/repos/{}", u.api, first.repo);
    let run_id = first.run_id;
    let status = if jobs.iter().all(|j| j.status == JobStatus::Completed) {
        "completed"
    } else if jobs.iter().any(|j| j.status != JobStatus::Queued) {
        "in_progress"
    } else {
        "queued"
    };
    let conclusion = (status == "completed").then(|| {
        if jobs.iter().all(|j| j.conclusion.as_deref() == Some("success")) { "success" } else { "failure" }
    });
    let updated = jobs
        .iter()
        .filter_map(|j| j.completed_at.or(j.started_at))
        .max()
        .unwrap_or(first.created_at)
        .max(first.created_at);
    let repo = repository(u, owner, owner_kind, name, first.created_at);
    Some(json!({
        "id": run_id, "name": first.workflow_name, "node_id": node_id("WorkflowRun", run_id),
        "check_suite_id": run_id + 7, "head_branch": "main", "head_sha": first.head_sha,
        "path": ".github/workflows/ci.yml", "run_number": first.run_number, "run_attempt": 1,
        "event": "push", "status": status, "conclusion": conclusion, "workflow_id": 161335,
        "url": format!("{r}/actions/runs/{run_id}"),
        "html_url": format!("{}/{}/actions/runs/{run_id}", u.html, first.repo),
        "pull_requests": [], "created_at": ts(first.created_at), "updated_at": ts(updated),
        "run_started_at": ts(first.created_at),
        "jobs_url": format!("{r}/actions/runs/{run_id}/jobs"),
        "logs_url": format!("{r}/actions/runs/{run_id}/logs"),
        "check_suite_url": format!("{r}/check-suites/{}", run_id + 7),
        "artifacts_url": format!("{r}/actions/runs/{run_id}/artifacts"),
        "cancel_url": format!("{r}/actions/runs/{run_id}/cancel"),
        "rerun_url": format!("{r}/actions/runs/{run_id}/rerun"),
        "previous_attempt_url": null,
        "workflow_url": format!("{r}/actions/workflows/161335"),
        "head_commit": {
            "id": first.head_sha, "tree_id": first.head_sha, "message": "simulated commit",
            "timestamp": ts(first.created_at),
            "author": {"name": "Sim Ulator", "email": "sim@example.com"},
            "committer": {"name": "Sim Ulator", "email": "sim@example.com"},
        },
        "repository": repo.clone(), "head_repository": repo,
        "display_title": first.workflow_name,
    }))
}

/// A `workflow_job` webhook payload.
pub fn workflow_job_event(
    u: &Urls,
    action: &str,
    j: &JobRecord,
    owner_kind: &str,
    installation_id: Option<i64>,
) -> Value {
    let (owner, name) = j.repo.split_once('/').unwrap_or((j.repo.as_str(), j.repo.as_str()));
    let mut wj = job_common(u, j);
    if let Some(o) = wj.as_object_mut() {
        // The webhook schema has no `run_attempt`-less variant but does not know `html_url: null`.
        o.insert("html_url".into(), json!(format!("{}/{}/runs/{}", u.html, j.repo, j.id)));
    }
    let mut v = json!({
        "action": action,
        "workflow_job": wj,
        "repository": repository(u, owner, owner_kind, name, j.created_at),
        "sender": user(u, "octocat", "User"),
    });
    if let Some(o) = v.as_object_mut() {
        if owner_kind == "Organization" {
            o.insert("organization".into(), organization(u, owner));
        }
        if let Some(id) = installation_id {
            o.insert("installation".into(), json!({"id": id, "node_id": node_id("Installation", id)}));
        }
    }
    v
}
