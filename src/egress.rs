//! Egress settings shared by every outbound client (ARM, Entra ID, GitHub REST, the Kubernetes
//! API server): the TLS trust and the proxy decisions.
//!
//! Proxies: the Azure edge (reqwest 0.12) and the GitHub edge (reqwest 0.13 under octocrab) read
//! `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their lower-case forms)
//! themselves, through hyper-util's proxy matcher; nothing here calls `.no_proxy()`. Loopback
//! hosts are proxied too unless `NO_PROXY` names them. The API server's client follows the same
//! matcher ([`kube_config`]).
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why the egress settings cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("reading the CA bundle {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the CA bundle {path} is not usable: {detail}")]
    Invalid { path: String, detail: String },
    #[error("building the TLS configuration: {0}")]
    Tls(String),
}

/// The TLS trust of every outbound client: Mozilla's roots (webpki-roots), the system's roots
/// (rustls-native-certs: `SSL_CERT_FILE`, `SSL_CERT_DIR` or the distribution's store) and the
/// certificates of `--ca-bundle` (e.g. the CA of a TLS-inspecting proxy). One rustls
/// configuration with the ring provider serves both reqwest versions. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    /// `None` only if rustls cannot build a configuration with ring's provider (it always can):
    /// the Azure edge then uses reqwest's own default and the GitHub edge refuses to build.
    config: Option<Arc<rustls::ClientConfig>>,
    extra: usize,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("extra_roots", &self.extra).finish()
    }
}

/// The same configuration (not merely equal settings).
impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        match (&self.config, &other.config) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

/// The built-in roots only, built once per process (the system store is read once).
impl Default for Tls {
    fn default() -> Self {
        static SYSTEM: OnceLock<Tls> = OnceLock::new();
        SYSTEM
            .get_or_init(|| match Tls::with_roots(Vec::new()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the TLS configuration");
                    Tls { config: None, extra: 0 }
                }
            })
            .clone()
    }
}

impl Tls {
    /// The built-in roots plus, when given, every certificate of the PEM file `ca_bundle`.
    pub fn with_bundle(ca_bundle: Option<&Path>) -> Result<Self, EgressError> {
        match ca_bundle {
            None => Ok(Self::default()),
            Some(path) => Self::with_roots(load_ca_bundle(path)?),
        }
    }

    fn with_roots(extra: Vec<CertificateDer<'static>>) -> Result<Self, EgressError> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "a system CA certificate store could not be read");
        }
        let (_, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "system CA certificates that do not parse are ignored");
        }
        let count = extra.len();
        for cert in extra {
            roots.add(cert).map_err(|e| EgressError::Tls(e.to_string()))?;
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| EgressError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self { config: Some(Arc::new(config)), extra: count })
    }

    /// The rustls configuration to hand to a client builder.
    pub fn client_config(&self) -> Option<rustls::ClientConfig> {
        self.config.as_deref().cloned()
    }

    /// How many certificates `--ca-bundle` added.
    pub fn extra_roots(&self) -> usize {
        self.extra
    }
}

/// Every certificate of a PEM file. A file without a certificate, with a malformed PEM section
/// or with a certificate rustls cannot use as a trust anchor is an error (a typo in the path or
/// a wrong file is reported at start, not as TLS failures later).
pub fn load_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, EgressError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| EgressError::Read { path: shown.clone(), source })?;
    let invalid = |detail: String| EgressError::Invalid { path: shown.clone(), detail };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE section".into()));
    }
    let mut check = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        check.add(cert.clone()).map_err(|e| invalid(format!("certificate {}: {e}", i.saturating_add(1))))?;
    }
    Ok(certs)
}

/// The proxy the API server's client uses: kube-client takes `HTTPS_PROXY` from the environment
/// for a kubeconfig (in-cluster configuration takes none) but compares `NO_PROXY` with the
/// proxy's own address. Here a proxy that came from the environment is dropped when the matcher
/// the other clients use (`matcher`, from the environment) sends the API server direct; a
/// kubeconfig's own `proxy-url` is kept.
fn api_server_proxy(
    proxy_url: Option<http::Uri>,
    env_proxy: Option<&str>,
    cluster_url: &http::Uri,
    matcher: &hyper_util::client::proxy::matcher::Matcher,
) -> Option<http::Uri> {
    let proxy = proxy_url?;
    let from_env = env_proxy.is_some_and(|e| e.parse::<http::Uri>().is_ok_and(|u| u == proxy));
    if from_env && matcher.intercept(cluster_url).is_none() {
        return None;
    }
    Some(proxy)
}

/// The API server's client configuration (`kube::Config::infer`) with [`api_server_proxy`]'s
/// proxy decision.
pub async fn kube_config() -> Result<kube::Config, kube::config::InferConfigError> {
    let mut config = kube::Config::infer().await?;
    let env_proxy =
        ["HTTPS_PROXY", "https_proxy"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    let matcher = hyper_util::client::proxy::matcher::Matcher::from_env();
    config.proxy_url =
        api_server_proxy(config.proxy_url.take(), env_proxy.as_deref(), &config.cluster_url, &matcher);
    match &config.proxy_url {
        Some(p) => {
            tracing::info!(proxy = %redact_userinfo(p), "the Kubernetes API server is reached through a proxy")
        }
        None => tracing::debug!("the Kubernetes API server is reached directly"),
    }
    Ok(config)
}

/// A URI without its user-info (a proxy URL may hold a password).
fn redact_userinfo(u: &http::Uri) -> String {
    let host = u.host().unwrap_or("");
    match u.port_u16() {
        Some(p) => format!("{}://{host}:{p}", u.scheme_str().unwrap_or("http")),
        None => format!("{}://{host}", u.scheme_str().unwrap_or("http")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::proxy::matcher::Matcher;

    /// A self-signed CA (generated once with openssl for this test; no key is kept).
    const CA_PEM: &str = include_str!("../tests/fixtures/egress-test-ca.pem");

    fn write(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, content).unwrap();
        f
    }

    #[test]
    fn a_pem_bundle_loads_and_adds_its_roots() {
        let f = write(format!("{CA_PEM}\n{CA_PEM}").as_bytes());
        assert_eq!(load_ca_bundle(f.path()).unwrap().len(), 2);
        let tls = Tls::with_bundle(Some(f.path())).unwrap();
        assert_eq!(tls.extra_roots(), 2);
        assert!(tls.client_config().is_some());
        assert_ne!(tls, Tls::default());
        assert_eq!(Tls::default(), Tls::default());
    }

    #[test]
    fn a_bad_bundle_is_refused_with_the_reason() {
        let missing = Tls::with_bundle(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(missing, EgressError::Read { .. }), "{missing}");
        let empty = write(b"no certificates here\n");
        let e = load_ca_bundle(empty.path()).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let garbage =
            write(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n");
        let e = load_ca_bundle(garbage.path()).unwrap_err();
        assert!(matches!(e, EgressError::Invalid { .. }) && e.to_string().contains("certificate 1"), "{e}");
        let truncated = write(&CA_PEM.as_bytes()[..CA_PEM.len() / 2]);
        assert!(load_ca_bundle(truncated.path()).is_err());
    }

    #[test]
    fn the_api_server_goes_direct_when_no_proxy_names_it() {
        let api: http::Uri = "https://127.0.0.1:6443".parse().unwrap();
        let proxy: http::Uri = "http://127.0.0.1:3128".parse().unwrap();
        let env = Some("http://127.0.0.1:3128");
        let exempt = Matcher::builder().https("http://127.0.0.1:3128").no("127.0.0.1").build();
        assert_eq!(api_server_proxy(Some(proxy.clone()), env, &api, &exempt), None);
        let proxied = Matcher::builder().https("http://127.0.0.1:3128").no("10.0.0.1").build();
        assert_eq!(api_server_proxy(Some(proxy.clone()), env, &api, &proxied), Some(proxy.clone()));
        // A kubeconfig's own proxy-url is not the environment's: kept.
        let own: http::Uri = "http://10.1.1.1:8080".parse().unwrap();
        assert_eq!(api_server_proxy(Some(own.clone()), env, &api, &exempt), Some(own));
        assert_eq!(api_server_proxy(None, env, &api, &proxied), None);
        assert_eq!(redact_userinfo(&"http://u:p@proxy:3128".parse().unwrap()), "http://proxy:3128");
    }
}
