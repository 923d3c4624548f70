//! The tenant policy: what the pools of each namespace may name
//! ([docs/security.md, "Tenant policy"](../../../docs/security.md#tenant-policy)).
//!
//! The installer writes it (the chart's `tenantPolicy` value, passed as `--tenant-policy`);
//! tenants who may create RunnerPools in a namespace cannot change it. Rules are tried in order
//! and the first whose `namespaces` names the pool's namespace applies; a namespace no rule names
//! gets the built-in default: no use of the controller's own Azure identity, every other field
//! free (the pool's own service principal is then what Azure checks).
//!
//! In a rule, a list that is absent allows any value and a list that is present allows only its
//! entries (an empty list allows none). Azure names and ids, locations and GitHub names compare
//! without regard to case, as Azure and GitHub compare them; image prefixes compare exactly.
//!
//! [`TenantPolicy::check`] is pure: the controller calls it before anything else in a pass, and a
//! pool it refuses is `Stalled` (`NotPermitted`) without a single Azure or GitHub call.
use serde::{Deserialize, Serialize};

use crate::crd::RunnerPoolSpec;

/// The whole policy (the YAML document of `--tenant-policy`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantPolicy {
    /// Tried in order; the first rule naming the pool's namespace applies.
    #[serde(default)]
    pub rules: Vec<NamespaceRule>,
}

/// What the pools of some namespaces may name; each list absent: any value.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceRule {
    /// Namespace names; an entry ending in `*` names every namespace starting with what precedes
    /// it (`*` alone: every namespace).
    pub namespaces: Vec<String>,
    /// May the pools run as the controller's own Azure identity (no
    /// `spec.azure.credentialsSecretRef`)?
    #[serde(default)]
    pub controller_identity: bool,
    /// Subscription ids (`spec.azure.subscriptionId`).
    pub subscriptions: Option<Vec<String>>,
    /// Resource group names (`spec.azure.resourceGroup`), in any allowed subscription.
    pub resource_groups: Option<Vec<String>>,
    /// Regions (`spec.azure.location` and every `fallbackLocations` entry).
    pub locations: Option<Vec<String>>,
    /// Subnet resource ids (`spec.azure.subnetIds`).
    pub subnets: Option<Vec<String>>,
    /// User-assigned identity resource ids (`spec.azure.identities`).
    pub identities: Option<Vec<String>>,
    /// Prefixes of `spec.runner.image`. A prefix matches at a boundary: it ends in `/`, `:` or
    /// `@`, or the image goes on with one of those after it, or is the prefix itself
    /// (`ghcr.io/actions` allows `ghcr.io/actions/actions-runner:2.330.0`, not
    /// `ghcr.io/actions-evil/runner`).
    pub image_prefixes: Option<Vec<String>>,
    /// Registry hosts (`spec.runner.imageRegistry.server`).
    pub registries: Option<Vec<String>>,
    /// Identities that pull from a registry (`spec.runner.imageRegistry.identity`).
    pub registry_identities: Option<Vec<String>>,
    /// Hosts of `spec.github.apiUrl` (e.g. `api.github.com`, `ghes.example.com`).
    pub github_hosts: Option<Vec<String>>,
    /// Organization logins, repository owners and enterprise slugs, whichever the pool's scope
    /// names (`spec.github.organization`, the owner of `spec.github.repository`,
    /// `spec.github.enterprise`).
    pub github_owners: Option<Vec<String>>,
}

/// Why a pool is outside its namespace's policy: the first refused field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not permitted by the tenant policy: {field}: {message}")]
pub struct NotPermitted {
    /// JSON path of the refused field, e.g. `spec.azure.subscriptionId`.
    pub field: String,
    pub message: String,
}

/// Rule-less default: own credentials only.
static DEFAULT_RULE: NamespaceRule = NamespaceRule {
    namespaces: Vec::new(),
    controller_identity: false,
    subscriptions: None,
    resource_groups: None,
    locations: None,
    subnets: None,
    identities: None,
    image_prefixes: None,
    registries: None,
    registry_identities: None,
    github_hosts: None,
    github_owners: None,
};

impl TenantPolicy {
    /// A policy read from YAML (or JSON); unknown fields and rules without namespaces are errors.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let policy: Self = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (i, rule) in policy.rules.iter().enumerate() {
            if rule.namespaces.is_empty() || rule.namespaces.iter().any(|n| n.trim().is_empty()) {
                return Err(format!("rules[{i}].namespaces: name at least one namespace, none empty"));
            }
        }
        Ok(policy)
    }

    /// A policy letting the pools of `namespaces` use the controller's identity and name anything;
    /// no namespaces means every namespace (as an empty `--namespaces` watches them all).
    pub fn controller_identity_for<I, S>(namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut namespaces: Vec<String> = namespaces.into_iter().map(Into::into).collect();
        if namespaces.is_empty() {
            namespaces.push("*".into());
        }
        Self {
            rules: vec![NamespaceRule { namespaces, controller_identity: true, ..NamespaceRule::default() }],
        }
    }

    /// The rule that applies to `namespace` (the built-in default when none names it).
    pub fn rule_for(&self, namespace: &str) -> &NamespaceRule {
        self.rules
            .iter()
            .find(|r| r.namespaces.iter().any(|n| namespace_matches(n, namespace)))
            .unwrap_or(&DEFAULT_RULE)
    }

    /// Is a pool with this spec in `namespace` within the policy? The first refused field.
    pub fn check(&self, namespace: &str, spec: &RunnerPoolSpec) -> Result<(), NotPermitted> {
        let rule = self.rule_for(namespace);
        let refuse = |field: &str, message: String| Err(NotPermitted { field: field.into(), message });
        let azure = &spec.azure;
        if azure.credentials_secret_ref.is_none() && !rule.controller_identity {
            return refuse(
                "spec.azure.credentialsSecretRef",
                format!(
                    "pools in namespace {namespace} may not run as the controller's Azure identity; \
                     name a service principal Secret"
                ),
            );
        }
        let g = rule;
        let one = |field: &str, allowed: &Option<Vec<String>>, value: &str, what: &str| {
            if allows_ignoring_case(allowed, value) {
                Ok(())
            } else {
                refuse(field, format!("{what} {value} is not allowed for namespace {namespace}"))
            }
        };
        one("spec.azure.subscriptionId", &g.subscriptions, &azure.subscription_id, "subscription")?;
        one("spec.azure.resourceGroup", &g.resource_groups, &azure.resource_group, "resource group")?;
        one("spec.azure.location", &g.locations, &azure.location, "location")?;
        for (i, l) in azure.fallback_locations.iter().enumerate() {
            one(&format!("spec.azure.fallbackLocations[{i}]"), &g.locations, l, "location")?;
        }
        for (i, s) in azure.subnet_ids.iter().enumerate() {
            one(&format!("spec.azure.subnetIds[{i}]"), &g.subnets, s, "subnet")?;
        }
        for (i, s) in azure.identities.iter().enumerate() {
            one(&format!("spec.azure.identities[{i}]"), &g.identities, s, "identity")?;
        }
        let r = rule;
        let image = &spec.runner.image;
        if let Some(prefixes) = &r.image_prefixes
            && !prefixes.iter().any(|p| image_has_prefix(image, p))
        {
            return refuse(
                "spec.runner.image",
                format!("image {image} does not start with a prefix allowed for namespace {namespace}"),
            );
        }
        if let Some(reg) = &spec.runner.image_registry {
            one("spec.runner.imageRegistry.server", &r.registries, &reg.server, "registry")?;
            if let Some(id) = &reg.identity {
                one("spec.runner.imageRegistry.identity", &r.registry_identities, id, "registry identity")?;
            }
        }
        let gh = &spec.github;
        let host = url::Url::parse(&gh.api_url).ok().and_then(|u| u.host_str().map(str::to_string));
        match (&rule.github_hosts, host) {
            (None, _) => {}
            (Some(_), None) => return refuse("spec.github.apiUrl", "the URL has no host".into()),
            (Some(_), Some(h)) => one("spec.github.apiUrl", &rule.github_hosts, &h, "GitHub host")?,
        }
        let owner = if let Some(o) = &gh.organization {
            Some(("spec.github.organization", o.as_str()))
        } else if let Some(r) = &gh.repository {
            Some(("spec.github.repository", r.split('/').next().unwrap_or_default()))
        } else {
            gh.enterprise.as_deref().map(|e| ("spec.github.enterprise", e))
        };
        if let Some((field, name)) = owner {
            one(field, &rule.github_owners, name, "GitHub owner")?;
        }
        Ok(())
    }
}

fn namespace_matches(pattern: &str, namespace: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => namespace.starts_with(prefix),
        None => pattern == namespace,
    }
}

fn allows_ignoring_case(allowed: &Option<Vec<String>>, value: &str) -> bool {
    allowed.as_ref().is_none_or(|list| list.iter().any(|a| a.eq_ignore_ascii_case(value)))
}

fn image_has_prefix(image: &str, prefix: &str) -> bool {
    let Some(rest) = image.strip_prefix(prefix) else { return false };
    rest.is_empty() || prefix.ends_with(['/', ':', '@']) || rest.starts_with(['/', ':', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The planner tests' spec (org `acme`, subscription `…000000`, `rg`, `westeurope`) with
    /// `extra` merged over it.
    fn spec(extra: serde_json::Value) -> RunnerPoolSpec {
        crate::plan::tests::spec_json(extra)
    }

    fn policy(yaml: &str) -> TenantPolicy {
        TenantPolicy::from_yaml(yaml).unwrap_or_else(|e| panic!("test policy: {e}"))
    }

    fn refused_field(p: &TenantPolicy, ns: &str, s: &RunnerPoolSpec) -> Option<String> {
        p.check(ns, s).err().map(|e| e.field)
    }

    const TEAM_A: &str = r#"
rules:
  - namespaces: [team-a]
    controllerIdentity: true
    subscriptions: ["00000000-0000-0000-0000-000000000000"]
    resourceGroups: [RG]
    locations: [westeurope, northeurope]
    subnets: ["/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/runners"]
    identities: []
    imagePrefixes: ["ghcr.io/actions"]
    registries: []
    githubHosts: [api.github.com]
    githubOwners: [Acme]
  - namespaces: ["ci-*"]
    githubOwners: [ci-org]
"#;

    #[test]
    fn the_default_refuses_only_the_controller_identity() {
        let p = TenantPolicy::default();
        assert_eq!(
            refused_field(&p, "any", &spec(serde_json::json!({}))).as_deref(),
            Some("spec.azure.credentialsSecretRef")
        );
        let own = spec(serde_json::json!({"azure": {"credentialsSecretRef": {"name": "sp"}}}));
        assert_eq!(p.check("any", &own), Ok(()));
    }

    #[test]
    fn every_field_is_checked_against_its_list() {
        let p = policy(TEAM_A);
        assert_eq!(p.check("team-a", &spec(serde_json::json!({}))), Ok(()));
        let cases = [
            (
                serde_json::json!({"azure": {"subscriptionId": "00000000-0000-0000-0000-0000000000bb"}}),
                "spec.azure.subscriptionId",
            ),
            (serde_json::json!({"azure": {"resourceGroup": "rg-other"}}), "spec.azure.resourceGroup"),
            (serde_json::json!({"azure": {"location": "eastus"}}), "spec.azure.location"),
            (
                serde_json::json!({"azure": {"fallbackLocations": ["northeurope", "eastus"]}}),
                "spec.azure.fallbackLocations[1]",
            ),
            (
                serde_json::json!({"azure": {"subnetIds": ["/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/other"]}}),
                "spec.azure.subnetIds[0]",
            ),
            (
                serde_json::json!({"azure": {"identities": ["/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i"]}}),
                "spec.azure.identities[0]",
            ),
            (serde_json::json!({"runner": {"image": "ghcr.io/actions-evil/runner:1"}}), "spec.runner.image"),
            (
                serde_json::json!({"runner": {"imageRegistry": {"server": "x.azurecr.io", "credentialsSecretRef": {"name": "r"}}}}),
                "spec.runner.imageRegistry.server",
            ),
            (
                serde_json::json!({"github": {"apiUrl": "https://ghes.example.com/api/v3"}}),
                "spec.github.apiUrl",
            ),
            (serde_json::json!({"github": {"organization": "other-org"}}), "spec.github.organization"),
        ];
        for (extra, field) in cases {
            assert_eq!(refused_field(&p, "team-a", &spec(extra.clone())).as_deref(), Some(field), "{extra}");
        }
        // Case-insensitive names; the repository's owner is the one checked.
        let repo = spec(
            serde_json::json!({"github": {"organization": null, "repository": "ACME/app"}, "azure": {"location": "WestEurope"}}),
        );
        assert_eq!(p.check("team-a", &repo), Ok(()));
        let other_repo =
            spec(serde_json::json!({"github": {"organization": null, "repository": "evil/app"}}));
        assert_eq!(refused_field(&p, "team-a", &other_repo).as_deref(), Some("spec.github.repository"));
    }

    #[test]
    fn the_first_matching_rule_applies_and_prefixes_match_namespaces() {
        let p = policy(TEAM_A);
        let own = |org: &str| {
            spec(
                serde_json::json!({"github": {"organization": org}, "azure": {"credentialsSecretRef": {"name": "sp"}}}),
            )
        };
        assert_eq!(p.check("ci-web", &own("ci-org")), Ok(()));
        assert_eq!(
            refused_field(&p, "ci-web", &own("octo-org")).as_deref(),
            Some("spec.github.organization")
        );
        // "ci-*" does not grant the controller identity; an unnamed namespace gets the default.
        assert_eq!(
            refused_field(&p, "ci-web", &spec(serde_json::json!({}))).as_deref(),
            Some("spec.azure.credentialsSecretRef")
        );
        assert_eq!(p.check("elsewhere", &own("anything")), Ok(()));
        assert_eq!(
            refused_field(&p, "team-ab", &spec(serde_json::json!({}))).as_deref(),
            Some("spec.azure.credentialsSecretRef")
        );
    }

    #[test]
    fn the_controller_identity_for_no_namespaces_is_for_every_namespace() {
        let all = TenantPolicy::controller_identity_for(Vec::<String>::new());
        assert!(all.rule_for("any").controller_identity);
        let one = TenantPolicy::controller_identity_for(["ci"]);
        assert!(one.rule_for("ci").controller_identity && !one.rule_for("other").controller_identity);
        // Both round-trip through the file format the controller reads.
        for p in [all, one] {
            assert_eq!(TenantPolicy::from_yaml(&serde_json::to_string(&p).unwrap()), Ok(p));
        }
    }

    #[test]
    fn image_prefixes_match_at_a_boundary() {
        for (image, prefix, ok) in [
            ("ghcr.io/actions/actions-runner:2.330.0", "ghcr.io/actions", true),
            ("ghcr.io/actions/actions-runner:2.330.0", "ghcr.io/actions/", true),
            ("ghcr.io/actions-evil/runner", "ghcr.io/actions", false),
            ("myacr.azurecr.io/runner@sha256:ab", "myacr.azurecr.io/runner", true),
            ("myacr.azurecr.io/runner", "myacr.azurecr.io/runner", true),
            ("myacr.azurecr.io/runner2", "myacr.azurecr.io/runner", false),
        ] {
            assert_eq!(image_has_prefix(image, prefix), ok, "{image} / {prefix}");
        }
    }

    #[test]
    fn a_malformed_policy_is_refused_with_the_field() {
        let e = TenantPolicy::from_yaml("rules:\n  - namespaces: [a]\n    controllerIdentiy: true\n")
            .unwrap_err();
        assert!(e.contains("controllerIdentiy"), "{e}");
        let e = TenantPolicy::from_yaml("rules:\n  - namespaces: []\n").unwrap_err();
        assert!(e.contains("rules[0].namespaces"), "{e}");
        assert_eq!(TenantPolicy::from_yaml(""), Ok(TenantPolicy::default()));
    }
}
