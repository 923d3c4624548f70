//! The container group of one runner: a pure function of the pool spec and the runner identity.
use std::collections::BTreeMap;

use azure_mgmt_containerinstance::package_preview_2024_05::models::{
    Container, ContainerGroup, ContainerGroupIdentity, ContainerGroupProperties, ContainerGroupSubnetId,
    ContainerProperties, EnvironmentVariable, ImageRegistryCredential, Resource, ResourceRequests,
    ResourceRequirements, UserAssignedIdentities, container_group_identity, container_group_properties,
};
use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};

use aci_runner_core::crd::{OsType, Priority, RunnerPoolSpec};

pub const TAG_MANAGED_BY: &str = "aci-runners-managed-by";
pub const MANAGED_BY_VALUE: &str = "aci-runner-controller";
pub const TAG_POOL_NAMESPACE: &str = "aci-runners-pool-namespace";
pub const TAG_POOL_NAME: &str = "aci-runners-pool-name";
pub const TAG_POOL_UID: &str = "aci-runners-pool-uid";
/// The install (controller deployment) that created the group; groups of other installs are
/// never touched (`aci_runner_core::plan::install`).
pub const TAG_INSTALL_ID: &str = "aci-runners-install-id";
pub const TAG_RUNNER: &str = "aci-runners-runner";
pub const TAG_SPEC_HASH: &str = "aci-runners-spec-hash";
pub const TAG_CREATED: &str = "aci-runners-created";
/// Set when the controller handed the group to its owner (orphan deletion policy).
pub const TAG_RELEASED: &str = "aci-runners-released";

/// The container's name inside every runner group.
pub const CONTAINER_NAME: &str = "runner";
/// Command of the official runner image in JIT mode.
pub const JIT_COMMAND: &str = "/home/runner/run.sh";

pub const ENV_JITCONFIG: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";
pub const ENV_RUNNER_URL: &str = "RUNNER_URL";
pub const ENV_RUNNER_NAME: &str = "RUNNER_NAME";
pub const ENV_RUNNER_LABELS: &str = "RUNNER_LABELS";
pub const ENV_RUNNER_GROUP: &str = "RUNNER_GROUP";
pub const ENV_RUNNER_WORKDIR: &str = "RUNNER_WORKDIR";
pub const ENV_RUNNER_EPHEMERAL: &str = "RUNNER_EPHEMERAL";
pub const ENV_RUNNER_TOKEN: &str = "RUNNER_TOKEN";

/// The pool a runner belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupOwner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The creating controller's install id.
    pub install_id: String,
    /// Short hash of the pool spec generation.
    pub spec_hash: String,
}

/// How this runner registers with GitHub (the JIT config and the token print redacted).
#[derive(Clone, Debug)]
pub enum RunnerBootstrap {
    /// The encoded JIT config from `generate-jitconfig`.
    Jit { encoded_config: SecretString },
    /// A registration token for `config.sh`-based images.
    Token { url: String, token: SecretString, labels: Vec<String>, group: Option<String>, ephemeral: bool },
}

/// Registry username/password (from the pool's registry credentials Secret; the password
/// prints redacted).
#[derive(Clone, Debug)]
pub struct RegistryPassword {
    pub username: String,
    pub password: SecretString,
}

/// One runner's identity and secrets.
#[derive(Clone, Debug)]
pub struct RunnerTemplateInput {
    /// Runner name = container group name.
    pub name: String,
    pub location: String,
    pub priority: Priority,
    pub registration: RunnerBootstrap,
    /// Resolved `spec.runner.secureEnvFrom` values (name, value): always secure.
    pub secure_env: Vec<(String, SecretString)>,
    pub registry_password: Option<RegistryPassword>,
    pub created: DateTime<Utc>,
}

fn plain(name: &str, value: &str) -> EnvironmentVariable {
    EnvironmentVariable { name: name.to_string(), value: Some(value.to_string()), secure_value: None }
}

fn secure(name: &str, value: &SecretString) -> EnvironmentVariable {
    EnvironmentVariable {
        name: name.to_string(),
        value: None,
        secure_value: Some(value.expose_secret().to_string()),
    }
}

/// The tags of a runner's container group: the user's `spec.azure.tags`, then the controller's
/// (which win on a clash).
pub fn tags(
    spec: &RunnerPoolSpec,
    pool: &GroupOwner,
    runner_name: &str,
    created: DateTime<Utc>,
) -> BTreeMap<String, String> {
    let mut t = spec.azure.tags.clone();
    t.insert(TAG_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    t.insert(TAG_POOL_NAMESPACE.into(), pool.namespace.clone());
    t.insert(TAG_POOL_NAME.into(), pool.name.clone());
    t.insert(TAG_POOL_UID.into(), pool.uid.clone());
    t.insert(TAG_INSTALL_ID.into(), pool.install_id.clone());
    t.insert(TAG_RUNNER.into(), runner_name.to_string());
    t.insert(TAG_SPEC_HASH.into(), pool.spec_hash.clone());
    t.insert(TAG_CREATED.into(), created.to_rfc3339_opts(SecondsFormat::Secs, true));
    t
}

/// Build the container group for one runner.
pub fn container_group(
    spec: &RunnerPoolSpec,
    pool: &GroupOwner,
    runner: &RunnerTemplateInput,
) -> ContainerGroup {
    let r = &spec.runner;
    let mut env: Vec<EnvironmentVariable> = Vec::new();
    for e in &r.env {
        env.push(plain(&e.name, e.value.as_deref().unwrap_or_default()));
    }
    let mut command = r.command.clone().unwrap_or_default();
    let ephemeral = match &runner.registration {
        RunnerBootstrap::Jit { encoded_config } => {
            env.push(secure(ENV_JITCONFIG, encoded_config));
            if command.is_empty() {
                command = vec![JIT_COMMAND.to_string()];
            }
            true
        }
        RunnerBootstrap::Token { url, token, labels, group, ephemeral } => {
            env.push(plain(ENV_RUNNER_URL, url));
            env.push(plain(ENV_RUNNER_NAME, &runner.name));
            env.push(plain(ENV_RUNNER_LABELS, &labels.join(",")));
            env.push(plain(ENV_RUNNER_GROUP, group.as_deref().unwrap_or("Default")));
            env.push(plain(ENV_RUNNER_WORKDIR, &r.work_folder));
            env.push(plain(ENV_RUNNER_EPHEMERAL, if *ephemeral { "true" } else { "false" }));
            env.push(secure(ENV_RUNNER_TOKEN, token));
            *ephemeral
        }
    };
    for (name, value) in &runner.secure_env {
        // A secret always wins over a plain variable of the same name (ACI rejects duplicates).
        env.retain(|e| &e.name != name);
        env.push(secure(name, value));
    }
    let mut props = ContainerProperties::new();
    props.image = Some(r.image.clone());
    props.command = command;
    props.environment_variables = env;
    props.resources = Some(ResourceRequirements::new(ResourceRequests::new(r.memory_gb, r.cpu)));
    let container = Container::new(CONTAINER_NAME.to_string(), props);

    let mut p = container_group_properties::Properties::new(vec![container]);
    p.os_type = Some(match r.os_type {
        OsType::Linux => container_group_properties::properties::OsType::Linux,
        OsType::Windows => container_group_properties::properties::OsType::Windows,
    });
    p.restart_policy = Some(if ephemeral {
        container_group_properties::properties::RestartPolicy::Never
    } else {
        container_group_properties::properties::RestartPolicy::Always
    });
    p.priority = Some(match runner.priority {
        Priority::Regular => container_group_properties::properties::Priority::Regular,
        Priority::Spot => container_group_properties::properties::Priority::Spot,
    });
    p.subnet_ids = spec.azure.subnet_ids.iter().map(|id| ContainerGroupSubnetId::new(id.clone())).collect();
    if let Some(reg) = &r.image_registry {
        let mut c = ImageRegistryCredential::new(reg.server.clone());
        if let Some(id) = &reg.identity {
            c.identity = Some(id.clone());
        } else if let Some(pw) = &runner.registry_password {
            c.username = Some(pw.username.clone());
            c.password = Some(pw.password.expose_secret().to_string());
        }
        p.image_registry_credentials = vec![c];
    }
    let mut props = ContainerGroupProperties::new(p);
    if !spec.azure.identities.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = spec
            .azure
            .identities
            .iter()
            .map(|id| (id.clone(), serde_json::to_value(UserAssignedIdentities::new()).unwrap_or_default()))
            .collect();
        props.identity = Some(ContainerGroupIdentity {
            principal_id: None,
            tenant_id: None,
            type_: Some(container_group_identity::Type::UserAssigned),
            user_assigned_identities: Some(serde_json::Value::Object(map)),
        });
    }
    let mut cg = ContainerGroup::new(props);
    cg.resource = Resource {
        location: Some(runner.location.clone()),
        tags: Some(serde_json::to_value(tags(spec, pool, &runner.name, runner.created)).unwrap_or_default()),
        ..Resource::default()
    };
    cg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let input = RunnerTemplateInput {
            name: "p-abcde".into(),
            location: "westeurope".into(),
            priority: Priority::Regular,
            registration: RunnerBootstrap::Token {
                url: "https://github.com/acme".into(),
                token: "tok-secret".into(),
                labels: vec!["aci".into()],
                group: None,
                ephemeral: true,
            },
            secure_env: vec![("NPM_TOKEN".into(), "npm-secret".into())],
            registry_password: Some(RegistryPassword {
                username: "acme".into(),
                password: "pw-secret".into(),
            }),
            created: DateTime::<Utc>::UNIX_EPOCH,
        };
        let jit = RunnerBootstrap::Jit { encoded_config: "jit-secret".into() };
        let printed = format!("{input:?} {jit:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert_eq!(printed.matches("[REDACTED]").count(), 4, "{printed}");
        assert!(printed.contains("NPM_TOKEN") && printed.contains("acme"), "names still print: {printed}");
    }
}
