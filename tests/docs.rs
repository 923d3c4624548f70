//! The documentation stays true: `docs/reference.md` is generated from the CRD schema
//! (`crds/runnerpool.yaml`) and must match it; links resolve; the operations guide covers every
//! condition reason and every metric the chart alerts on; the Helm guide covers every value.
//!
//! Regenerate the reference with `UPDATE_DOCS=1 cargo test --test docs`.
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_value(text: &str) -> Value {
    Value::deserialize(serde_yaml::Deserializer::from_str(text)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reference generator
// ---------------------------------------------------------------------------------------------

/// Escape a value for a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ").trim().to_string()
}

fn code(s: &str) -> String {
    format!("`{}`", s.replace('|', "\\|"))
}

/// `1000` rather than `1000.0` for whole numbers (YAML bounds parse as floats).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

fn type_of(schema: &Value) -> String {
    let t = schema["type"].as_str().unwrap_or("");
    match t {
        "array" => format!("[]{}", type_of(&schema["items"])),
        "object" if schema.get("additionalProperties").is_some_and(Value::is_object) => {
            format!("map[string]{}", type_of(&schema["additionalProperties"]))
        }
        "" if schema.get("x-kubernetes-int-or-string").is_some() => "int-or-string".into(),
        "" => "any".into(),
        other => match schema["format"].as_str() {
            Some(f) => format!("{other} ({f})"),
            None => other.to_string(),
        },
    }
}

fn validation_of(schema: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(e) = schema["enum"].as_array() {
        let vals: Vec<String> = e.iter().map(|v| code(v.as_str().unwrap_or(&v.to_string()))).collect();
        parts.push(format!("one of {}", vals.join(", ")));
    }
    for (key, label) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
    ] {
        if let Some(v) = schema.get(key).and_then(Value::as_f64) {
            parts.push(format!("{label} {}", number(v)));
        }
    }
    if let Some(p) = schema["pattern"].as_str() {
        parts.push(format!("pattern {}", code(p)));
    }
    if let Some(items) = schema.get("items") {
        let inner = validation_of(items);
        if !inner.is_empty() && items["type"] != "object" {
            parts.push(format!("each item: {inner}"));
        }
    }
    if schema["x-kubernetes-list-type"].as_str() == Some("map") {
        let keys: Vec<String> = schema["x-kubernetes-list-map-keys"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str()).map(code).collect())
            .unwrap_or_default();
        parts.push(format!("list keyed by {}", keys.join(", ")));
    }
    parts.join("; ")
}

/// The object's properties as (name, schema), in schema order (alphabetical in the CRD).
fn properties(schema: &Value) -> Vec<(String, Value)> {
    let obj = if schema["type"] == "array" { &schema["items"] } else { schema };
    obj["properties"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn is_object_like(schema: &Value) -> bool {
    !properties(schema).is_empty()
}

fn section(out: &mut String, path: &str, schema: &Value) {
    let obj = if schema["type"] == "array" { &schema["items"] } else { schema };
    let _ = writeln!(out, "### `{path}`\n");
    if let Some(d) = schema["description"].as_str().or(obj["description"].as_str()) {
        let _ = writeln!(out, "{}\n", d.trim());
    }
    let required: BTreeSet<&str> =
        obj["required"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    let _ = writeln!(out, "| Field | Type | Required | Default | Validation | Description |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    let mut nested = Vec::new();
    for (name, prop) in properties(schema) {
        let child = format!("{path}.{name}");
        let mut ty = code(&type_of(&prop));
        if is_object_like(&prop) {
            let anchor = child.replace('.', "").replace("[]", "").to_lowercase();
            ty = format!("{ty} ([details](#{anchor}))");
            nested.push((child, prop.clone()));
        }
        let default = match prop.get("default") {
            Some(d) if d.is_object() => "see fields".to_string(),
            Some(d) => code(&d.to_string()),
            None => String::new(),
        };
        let req = if required.contains(name.as_str()) { "yes" } else { "" };
        let _ = writeln!(
            out,
            "| `{name}` | {ty} | {req} | {default} | {} | {} |",
            validation_of(&prop),
            cell(prop["description"].as_str().unwrap_or(""))
        );
    }
    if let Some(rules) = obj["x-kubernetes-validations"].as_array() {
        let _ = writeln!(
            out,
            "\nRules (CEL on Kubernetes 1.25+; the controller checks them on every version):\n"
        );
        for r in rules {
            let _ = writeln!(
                out,
                "- {} — `{}`",
                r["message"].as_str().unwrap_or(""),
                r["rule"].as_str().unwrap_or("")
            );
        }
    }
    let _ = writeln!(out);
    for (child, prop) in nested {
        let p = if prop["type"] == "array" { format!("{child}[]") } else { child };
        section(out, &p, &prop);
    }
}

/// `docs/reference.md`, generated from the CRD.
fn reference_markdown(crd: &Value) -> String {
    let names = &crd["spec"]["names"];
    let version = &crd["spec"]["versions"][0];
    let root = &version["schema"]["openAPIV3Schema"];
    let mut out = String::new();
    // The root description is kube-derive boilerplate; the spec section carries the real one.
    let _ = writeln!(out, "# RunnerPool reference\n");
    let _ = writeln!(
        out,
        "<!-- Generated from crds/runnerpool.yaml by tests/docs.rs; do not edit. \
         Regenerate: UPDATE_DOCS=1 cargo test --test docs -->\n"
    );
    let _ = writeln!(
        out,
        "`apiVersion: {}/{}`, `kind: {}` (plural `{}`, short name {}, category {}), namespaced.\n",
        crd["spec"]["group"].as_str().unwrap_or(""),
        version["name"].as_str().unwrap_or(""),
        names["kind"].as_str().unwrap_or(""),
        names["plural"].as_str().unwrap_or(""),
        names["shortNames"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).map(code).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        names["categories"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).map(code).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
    );
    let _ = writeln!(
        out,
        "Defaults are applied by the API server when the object is stored. Durations use Go syntax \
         (`90s`, `5m`, `1h30m`). On Kubernetes before 1.25 the API server ignores the CEL rules \
         listed under *Rules*; the controller then reports a violation as `Stalled` with reason \
         `InvalidSpec` instead of the API server rejecting the object.\n"
    );
    if let Some(cols) = version["additionalPrinterColumns"].as_array() {
        let _ = writeln!(out, "`kubectl get runnerpools` columns:\n");
        let _ = writeln!(out, "| Column | Type | JSONPath |");
        let _ = writeln!(out, "| --- | --- | --- |");
        for c in cols {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                c["name"].as_str().unwrap_or(""),
                c["type"].as_str().unwrap_or(""),
                code(c["jsonPath"].as_str().unwrap_or(""))
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "## Spec\n");
    section(&mut out, "spec", &root["properties"]["spec"]);
    let _ = writeln!(out, "## Status\n");
    let _ = writeln!(out, "Written by the controller (server-side apply on the `status` subresource).\n");
    section(&mut out, "status", &root["properties"]["status"]);
    out.trim_end().to_string() + "\n"
}

fn crd() -> Value {
    yaml_value(&read("crds/runnerpool.yaml"))
}

#[test]
fn reference_is_generated_from_the_crd_schema() {
    let want = reference_markdown(&crd());
    let path = repo().join("docs/reference.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/reference.md is stale (the CRD changed): regenerate it with `UPDATE_DOCS=1 cargo test --test docs`"
    );
}

/// Every field path in the schema, e.g. `spec.github.appSecretRef.name`.
fn field_paths(schema: &Value, prefix: &str, out: &mut Vec<String>) {
    for (name, prop) in properties(schema) {
        let p = format!("{prefix}.{name}");
        out.push(p.clone());
        let child = if prop["type"] == "array" { format!("{p}[]") } else { p };
        field_paths(&prop, &child, out);
    }
}

#[test]
fn reference_covers_every_field_with_its_description() {
    let crd = crd();
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let md = reference_markdown(&crd);
    let mut paths = Vec::new();
    field_paths(&root["properties"]["spec"], "spec", &mut paths);
    assert!(paths.len() > 40, "suspiciously few spec fields: {}", paths.len());
    for p in &paths {
        let (parent, name) = p.rsplit_once('.').unwrap();
        // The field's row lives in its parent's section (`[]` marks list items).
        let header = format!("### `{parent}`\n");
        let start = md.find(&header).unwrap_or_else(|| panic!("no section for {parent}"));
        let rest = &md[start..];
        let end = rest[4..].find("\n### ").map(|i| i + 4).unwrap_or(rest.len());
        assert!(rest[..end].contains(&format!("| `{name}` |")), "{p} missing from the reference");
    }
    // Spot checks of the rendering itself.
    assert!(md.contains("| `minIdle` | `integer (int32)` |  | `1` | min 0; max 1000 |"), "minIdle row");
    assert!(md.contains("minIdle must not exceed maxRunners"), "CEL rule messages are listed");
    assert!(md.contains("one of `jit`, `token`"), "enums are listed");
    assert!(md.contains("| `labels` | `[]string` | yes |"), "required arrays are marked");
}

// ---------------------------------------------------------------------------------------------
// Consistency of the hand-written docs
// ---------------------------------------------------------------------------------------------

fn markdown_files() -> Vec<PathBuf> {
    let mut v = vec![repo().join("README.md")];
    let mut stack = vec![repo().join("docs"), repo().join("examples"), repo().join("charts")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn relative_links_resolve() {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = Vec::new();
    let files = markdown_files();
    assert!(files.len() >= 8, "expected the docs set, found {files:?}");
    // Code (fenced blocks and inline spans) is not prose: regex patterns there look like links.
    let fenced = regex::Regex::new(r"(?s)```.*?```").unwrap();
    let inline = regex::Regex::new(r"`[^`\n]*`").unwrap();
    for file in files {
        let raw = std::fs::read_to_string(&file).unwrap();
        let without_blocks = fenced.replace_all(&raw, "");
        let text = inline.replace_all(&without_blocks, "");
        for cap in link.captures_iter(&text) {
            let target = &cap[1];
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let resolved: PathBuf =
                if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            if !resolved.exists() {
                broken.push(format!("{}: {target}", file.display()));
                continue;
            }
            if !anchor.is_empty() && resolved.extension().is_some_and(|x| x == "md") {
                let body = std::fs::read_to_string(&resolved).unwrap();
                if !anchors(&body).contains(anchor) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// GitHub-style heading anchors of a Markdown document.
fn anchors(md: &str) -> BTreeSet<String> {
    md.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    'a'..='z' | '0'..='9' | '-' | '_' => Some(c),
                    ' ' => Some('-'),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn operations_guide_covers_every_condition_reason_and_alerted_metric() {
    let ops = read("docs/operations.md");
    // Every reason the planner can write into a condition or an Event.
    let reasons = aci_runner_core::plan::conditions::CONDITION_REASONS
        .iter()
        .chain(aci_runner_core::plan::conditions::EVENT_REASONS);
    for reason in reasons {
        assert!(ops.contains(&format!("`{reason}`")), "docs/operations.md does not explain `{reason}`");
    }
    let rule = read("charts/aci-runner-controller/templates/prometheusrule.yaml");
    let metric = regex::Regex::new(r"aci_runner_controller_[a-z_]+").unwrap();
    let metrics: BTreeSet<&str> = metric.find_iter(&rule).map(|m| m.as_str()).collect();
    assert!(metrics.len() >= 5, "{metrics:?}");
    for m in metrics {
        assert!(ops.contains(m), "docs/operations.md does not describe the alerted metric {m}");
    }
    let alert = regex::Regex::new(r"alert: (\w+)").unwrap();
    for a in alert.captures_iter(&rule) {
        assert!(ops.contains(&a[1]), "docs/operations.md does not describe the alert {}", &a[1]);
    }
}

/// Leaf key paths of a YAML mapping, e.g. `controller.leaderElection.enabled`.
fn value_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                value_paths(x, &p, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn helm_guide_documents_every_chart_value() {
    let values = yaml_value(&read("charts/aci-runner-controller/values.yaml"));
    let guide = read("docs/helm.md");
    let mut paths = Vec::new();
    value_paths(&values, "", &mut paths);
    // Free-form objects (securityContext, probes, resources) are documented as a whole.
    let documented_whole = [
        "podSecurityContext",
        "securityContext",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "nodeSelector",
    ];
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !documented_whole.iter().any(|w| p.starts_with(&format!("{w}."))))
        .filter(|p| !guide.contains(&format!("`{p}`")))
        .collect();
    assert!(missing.is_empty(), "docs/helm.md does not document: {missing:?}");
    for w in documented_whole {
        assert!(guide.contains(&format!("`{w}`")), "docs/helm.md does not document `{w}`");
    }
}

#[test]
fn security_and_quickstart_state_the_required_permissions() {
    let quick = read("docs/quickstart-aks.md");
    for needle in [
        "Self-hosted runners",
        "Administration",
        "Actions",
        "federated-credential",
        "--scope",
        "workload identity",
        "azure.workloadIdentity.clientId",
    ] {
        assert!(quick.contains(needle), "docs/quickstart-aks.md lacks {needle:?}");
    }
    let sec = read("docs/security.md");
    for needle in ["ACTIONS_RUNNER_INPUT_JITCONFIG", "secure", "privateKey", "watchNamespaces", "get"] {
        assert!(sec.contains(needle), "docs/security.md lacks {needle:?}");
    }
    let mig = read("docs/migration.md");
    for needle in ["start.sh", "generateJWT.py", "cleanup", "RUNNER_TOKEN", "registration.mode"] {
        assert!(mig.contains(needle), "docs/migration.md lacks {needle:?}");
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_oci_labels() {
    let df = read("Dockerfile");
    let froms: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage build expected: {froms:?}");
    let last = froms.last().unwrap();
    assert!(last.contains("distroless") && last.contains("nonroot"), "final stage: {last}");
    assert!(df.contains("cargo build --release --locked"), "release build");
    let final_stage = &df[df.rfind("FROM ").unwrap()..];
    assert_eq!(final_stage.matches("COPY ").count(), 1, "the final stage copies only the binary");
    assert!(final_stage.contains("USER 65532:65532"));
    for label in ["title", "description", "source", "licenses", "version", "revision", "created"] {
        assert!(df.contains(&format!("org.opencontainers.image.{label}")), "OCI label {label} missing");
    }
    let ignore = read(".dockerignore");
    for entry in ["target", ".git"] {
        assert!(ignore.lines().any(|l| l.trim_start_matches('/') == entry), ".dockerignore lacks {entry}");
    }
}

#[test]
fn ci_workflow_runs_the_same_checks_as_ci_run() {
    let wf = yaml_value(&read(".github/workflows/ci.yml"));
    let run = read(".ci/run");
    let steps: Vec<String> = wf["jobs"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|j| j["steps"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["run"].as_str().map(str::to_string))
        .collect();
    let all = steps.join("\n");
    for check in [
        "cargo fmt --all -- --check",
        "cargo clippy --workspace --all-targets -- -D warnings",
        "scripts/test",
    ] {
        assert!(run.contains(check), ".ci/run no longer runs {check:?}: update the workflow and this test");
        assert!(all.contains(check), ".github/workflows/ci.yml does not run {check:?}");
    }
}

#[test]
fn runner_pools_shown_in_the_docs_are_valid() {
    let fenced = regex::Regex::new(r"(?s)```yaml\n(.*?)```").unwrap();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for block in fenced.captures_iter(&text) {
            if !block[1].contains("kind: RunnerPool") {
                continue;
            }
            for doc in serde_yaml::Deserializer::from_str(&block[1]) {
                let doc = Value::deserialize(doc).unwrap();
                if doc["kind"] != "RunnerPool" {
                    continue;
                }
                let spec: aci_runner_core::crd::RunnerPoolSpec = serde_json::from_value(doc["spec"].clone())
                    .unwrap_or_else(|e| panic!("{}: RunnerPool does not parse: {e}", file.display()));
                spec.validate().unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                checked += 1;
            }
        }
    }
    assert!(checked >= 1, "the quickstart shows a RunnerPool");
}

/// `aci-runner-controller run --help`: every long flag (but `--help`) and its environment
/// variable, if any.
fn run_help_flags() -> std::collections::BTreeMap<String, Option<String>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aci-runner-controller"))
        .args(["run", "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let flag = regex::Regex::new(r"^\s+(?:-\w, )?--([a-z0-9-]+)").unwrap();
    let env = regex::Regex::new(r"\[env: ([A-Z0-9_]+)=").unwrap();
    let mut flags = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        if let Some(c) = flag.captures(line) {
            current = Some(c[1].to_string());
            flags.insert(c[1].to_string(), None);
        }
        if let (Some(c), Some(f)) = (env.captures(line), &current) {
            flags.insert(f.clone(), Some(c[1].to_string()));
        }
    }
    flags.remove("help");
    assert!(flags.len() > 20, "the flags of run were not found in:\n{help}");
    flags
}

/// docs/operations.md's table of `run`'s flags and variables is `run --help` (both ways, with
/// the same variable per flag); every flag the docs give `aci-runner-controller run` and every
/// chart value's flag in docs/helm.md is one of them; every controller variable the docs name
/// (`AZURE_*`, `ARM_*`, `ACI_*`, `GITHUB_*`, `PRICE_*`, `WATCH_*`, `POD_*`, `WEBHOOK_*`, `POOL_*`)
/// is a flag's, or one the Azure identity or cloud configuration reads.
#[test]
fn documented_run_flags_and_variables_are_run_help() {
    let help = run_help_flags();
    let ops = read("docs/operations.md");
    let table = ops
        .split("## Flags and environment of `run`")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/operations.md has a section `Flags and environment of `run``");
    let row = regex::Regex::new(r"^\| `--([a-z0-9-]+)` \| (?:`([A-Z0-9_]+)`|—) \|").unwrap();
    let documented: std::collections::BTreeMap<String, Option<String>> = table
        .lines()
        .filter_map(|l| row.captures(l))
        .map(|c| (c[1].to_string(), c.get(2).map(|m| m.as_str().to_string())))
        .collect();
    assert_eq!(documented, help, "docs/operations.md's flag table and `run --help` differ");

    let token = regex::Regex::new(r"--([a-z0-9][a-z0-9-]*)").unwrap();
    let value_flag = regex::Regex::new(r"\(`--([a-z0-9][a-z0-9-]*)").unwrap();
    let mut named = Vec::new();
    for f in markdown_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut continued = false;
        for line in text.lines() {
            if f.ends_with("docs/helm.md") && line.starts_with("| `controller.") {
                // A value's flag, by the table's convention: "(`--flag`".
                named.extend(value_flag.captures_iter(line).map(|c| (f.clone(), c[1].to_string())));
            }
            if continued || line.contains("aci-runner-controller run") {
                named.extend(token.captures_iter(line).map(|c| (f.clone(), c[1].to_string())));
            }
            continued = (continued || line.contains("aci-runner-controller run")) && line.ends_with('\\');
        }
    }
    assert!(named.iter().any(|(_, n)| n == "namespaces"), "no `aci-runner-controller run` line found");
    let unknown: Vec<String> = named
        .iter()
        .filter(|(_, n)| !help.contains_key(n) && n != "help")
        .map(|(f, n)| format!("{}: --{n}", f.display()))
        .collect();
    assert!(unknown.is_empty(), "flags the docs give the controller that `run` does not have: {unknown:?}");

    // The variables the Azure identity (`CredentialSpec::from_env`) and the library's cloud
    // configuration (`CloudConfig::from_env`) read, as their source spells them.
    let credentials = read("src/azure/credentials.rs");
    let others = [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_RESOURCE_MANAGER_ENDPOINT",
        "AZURE_RESOURCE_MANAGER_SCOPE",
    ];
    for v in others {
        assert!(credentials.contains(&format!("\"{v}\"")), "src/azure/credentials.rs no longer reads {v}");
    }
    let known: BTreeSet<&str> = help.values().flatten().map(String::as_str).chain(others).collect();
    let var =
        regex::Regex::new(r"\b(?:AZURE|ARM|ACI|GITHUB|PRICE|WATCH|POD|WEBHOOK|POOL)_[A-Z0-9_]*[A-Z0-9]\b")
            .unwrap();
    let mut unread = Vec::new();
    for f in markdown_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        // A guide's own shell variables (`NAME=…` at the start of a line) are not the controller's.
        let own: BTreeSet<&str> =
            text.lines().filter_map(|l| l.trim_start().split_once('=')).map(|(n, _)| n).collect();
        for m in var.find_iter(&text) {
            // Nor are the devkit's (tests, benchmarks).
            let theirs = m.as_str().starts_with("ACI_RC_") || own.contains(m.as_str());
            if !theirs && !known.contains(m.as_str()) {
                unread.push(format!("{}: {}", f.display(), m.as_str()));
            }
        }
    }
    assert!(unread.is_empty(), "variables the docs name that the controller does not read: {unread:?}");
}
