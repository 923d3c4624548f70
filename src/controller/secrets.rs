//! Resolving a pool's Secrets into a [`PoolContext`]. Messages name Secrets and keys, never values.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use secrecy::SecretString;

use super::ports::{AzureCredentials, GithubCredentials, PoolContext};
use aci_runner_core::crd::RunnerPoolSpec;
use aci_runner_core::plan::{CredentialProblem, CredentialStatus, PoolMeta};

/// Reads Secrets by name (one namespace); a trait so the resolution rules are testable without a cluster.
pub trait SecretSource {
    /// `Ok(None)` when the Secret does not exist.
    fn get(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<BTreeMap<String, Vec<u8>>>, String>> + Send;
}

/// Secrets of one namespace through the API server.
pub struct KubeSecrets(pub Api<Secret>);

impl SecretSource for KubeSecrets {
    async fn get(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        match self.0.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading Secret {name}: {e}")),
        }
    }
}

struct Reader<'a, S: SecretSource> {
    src: &'a S,
    cache: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl<S: SecretSource> Reader<'_, S> {
    async fn secret(&mut self, name: &str) -> Result<&BTreeMap<String, Vec<u8>>, CredentialStatus> {
        if !self.cache.contains_key(name) {
            let got =
                self.src.get(name).await.map_err(|message| CredentialStatus::Unavailable { message })?;
            self.cache.insert(name.to_string(), got);
        }
        match self.cache.get(name) {
            Some(Some(data)) => Ok(data),
            _ => Err(CredentialStatus::Invalid {
                problem: CredentialProblem::SecretNotFound,
                message: format!("Secret {name} not found in the pool's namespace"),
            }),
        }
    }

    async fn optional_key(&mut self, name: &str, key: &str) -> Result<Option<String>, CredentialStatus> {
        let data = self.secret(name).await?;
        match data.get(key) {
            None => Ok(None),
            Some(v) => match String::from_utf8(v.clone()) {
                Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                Ok(_) => Err(CredentialStatus::Invalid {
                    problem: CredentialProblem::InvalidSecret,
                    message: format!("Secret {name} key {key} is empty"),
                }),
                Err(_) => Err(CredentialStatus::Invalid {
                    problem: CredentialProblem::InvalidSecret,
                    message: format!("Secret {name} key {key} is not UTF-8"),
                }),
            },
        }
    }

    async fn key(&mut self, name: &str, key: &str) -> Result<String, CredentialStatus> {
        self.optional_key(name, key).await?.ok_or_else(|| CredentialStatus::Invalid {
            problem: CredentialProblem::SecretKeyMissing,
            message: format!("Secret {name} has no key {key}"),
        })
    }
}

/// Read every Secret the pool references. On failure the status says why (never a value).
pub async fn resolve<S: SecretSource>(
    src: &S,
    meta: &PoolMeta,
    spec: &RunnerPoolSpec,
    spec_hash: &str,
) -> Result<PoolContext, CredentialStatus> {
    let mut r = Reader { src, cache: BTreeMap::new() };
    let g = &spec.github;
    let github = if let Some(app) = &g.app_secret_ref {
        let app_id = r.optional_key(&app.name, "appId").await?;
        let client_id = r.optional_key(&app.name, "clientId").await?;
        if app_id.is_none() && client_id.is_none() {
            return Err(CredentialStatus::Invalid {
                problem: CredentialProblem::SecretKeyMissing,
                message: format!("Secret {} needs appId or clientId", app.name),
            });
        }
        let installation = r.key(&app.name, "installationId").await?;
        let installation_id: u64 = installation.parse().map_err(|_| CredentialStatus::Invalid {
            problem: CredentialProblem::InvalidSecret,
            message: format!("Secret {} key installationId is not a number", app.name),
        })?;
        let pem = r.key(&app.name, "privateKey").await?;
        if jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).is_err() {
            return Err(CredentialStatus::Invalid {
                problem: CredentialProblem::InvalidAppKey,
                message: format!("Secret {} key privateKey is not an RSA private key in PEM form", app.name),
            });
        }
        GithubCredentials::App { app_id, client_id, installation_id, private_key: SecretString::from(pem) }
    } else if let Some(tok) = &g.token_secret_ref {
        GithubCredentials::Token { token: SecretString::from(r.key(&tok.name, &tok.key).await?) }
    } else {
        return Err(CredentialStatus::Invalid {
            problem: CredentialProblem::InvalidSecret,
            message: "spec.github needs appSecretRef or tokenSecretRef".into(),
        });
    };
    let azure = match &spec.azure.credentials_secret_ref {
        None => AzureCredentials::Controller,
        Some(s) => AzureCredentials::ServicePrincipal {
            tenant_id: r.key(&s.name, "tenantId").await?,
            client_id: r.key(&s.name, "clientId").await?,
            client_secret: SecretString::from(r.key(&s.name, "clientSecret").await?),
        },
    };
    let mut secure_env = Vec::new();
    for e in &spec.runner.secure_env_from {
        let v = r.key(&e.secret_key_ref.name, &e.secret_key_ref.key).await?;
        secure_env.push((e.name.clone(), SecretString::from(v)));
    }
    let registry_credentials =
        match spec.runner.image_registry.as_ref().and_then(|x| x.credentials_secret_ref.as_ref()) {
            None => None,
            Some(s) => Some((
                r.key(&s.name, "username").await?,
                SecretString::from(r.key(&s.name, "password").await?),
            )),
        };
    Ok(PoolContext {
        meta: meta.clone(),
        spec: spec.clone(),
        spec_hash: spec_hash.to_string(),
        github,
        azure,
        secure_env,
        registry_credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Map(BTreeMap<String, BTreeMap<String, Vec<u8>>>);
    impl SecretSource for Map {
        async fn get(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
            Ok(self.0.get(name).cloned())
        }
    }

    fn spec() -> RunnerPoolSpec {
        serde_json::from_value(serde_json::json!({
            "github": {"organization": "acme", "labels": ["aci"], "appSecretRef": {"name": "app"}},
            "azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "location": "westeurope"}
        }))
        .unwrap()
    }

    fn pem() -> String {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let mut rng = rand::thread_rng();
        let key = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap().to_string()
    }

    fn secret(kv: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        kv.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    async fn run(secrets: Vec<(&str, BTreeMap<String, Vec<u8>>)>) -> Result<PoolContext, CredentialStatus> {
        let src = Map(secrets.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        resolve(&src, &PoolMeta::default(), &spec(), "h").await
    }

    fn problem(r: Result<PoolContext, CredentialStatus>) -> CredentialProblem {
        match r {
            Err(CredentialStatus::Invalid { problem, message }) => {
                assert!(!message.contains("BEGIN"), "message leaks key material");
                problem
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn app_secret_resolution() {
        let key = pem();
        let ok = run(vec![("app", secret(&[("appId", "1"), ("installationId", "2"), ("privateKey", &key)]))])
            .await;
        assert!(matches!(
            ok,
            Ok(PoolContext { github: GithubCredentials::App { installation_id: 2, .. }, .. })
        ));
        assert_eq!(problem(run(vec![]).await), CredentialProblem::SecretNotFound);
        assert_eq!(
            problem(run(vec![("app", secret(&[("appId", "1"), ("privateKey", &key)]))]).await),
            CredentialProblem::SecretKeyMissing
        );
        assert_eq!(
            problem(run(vec![("app", secret(&[("installationId", "2"), ("privateKey", &key)]))]).await),
            CredentialProblem::SecretKeyMissing
        );
        assert_eq!(
            problem(
                run(vec![(
                    "app",
                    secret(&[("appId", "1"), ("installationId", "2"), ("privateKey", "-----BEGIN nope")])
                )])
                .await
            ),
            CredentialProblem::InvalidAppKey
        );
    }
}
