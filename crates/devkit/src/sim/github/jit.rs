//! The encoded JIT runner configuration, shaped like GitHub's: base64 of a JSON object whose
//! `.runner`, `.credentials` and `.credentials_rsaparams` members are themselves base64-encoded
//! JSON files (what `config.sh` would have written). The simulated runner decodes it the same way.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What the simulated runner needs from its JIT config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JitPayload {
    pub runner_id: i64,
    pub runner_name: String,
    pub pool_id: i64,
    pub server_url: String,
    pub github_url: String,
    pub work_folder: String,
    pub client_id: String,
    /// Per-runner secret; the simulator checks it when the runner connects.
    pub secret: String,
}

/// Encode as GitHub does (opaque to the controller).
pub fn encode(p: &JitPayload) -> String {
    let runner = json!({
        "AgentId": p.runner_id,
        "AgentName": p.runner_name,
        "PoolId": p.pool_id,
        "PoolName": null,
        "DisableUpdate": false,
        "Ephemeral": true,
        "ServerUrl": p.server_url,
        "GitHubUrl": p.github_url,
        "WorkFolder": p.work_folder,
    });
    let credentials = json!({
        "Scheme": "OAuthAccessToken",
        "Data": {"clientId": p.client_id, "authorizationUrl": format!("{}/_apis/oauth2/token", p.server_url),
                 "requireFipsCryptography": "False"},
    });
    let rsa = json!({ "d": p.secret, "exponent": "AQAB", "modulus": p.secret });
    let outer = json!({
        ".runner": STANDARD.encode(runner.to_string()),
        ".credentials": STANDARD.encode(credentials.to_string()),
        ".credentials_rsaparams": STANDARD.encode(rsa.to_string()),
    });
    STANDARD.encode(outer.to_string())
}

/// Why a JIT config could not be read (the real runner exits non-zero in these cases).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JitDecodeError {
    #[error("JIT config is not valid base64 JSON")]
    Malformed,
    #[error("JIT config lacks {0}")]
    Missing(&'static str),
}

fn inner(outer: &Value, key: &'static str) -> Result<Value, JitDecodeError> {
    let s = outer.get(key).and_then(Value::as_str).ok_or(JitDecodeError::Missing(key))?;
    let bytes = STANDARD.decode(s).map_err(|_| JitDecodeError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JitDecodeError::Malformed)
}

/// Decode like the runner's `run.sh --jitconfig`.
pub fn decode(encoded: &str) -> Result<JitPayload, JitDecodeError> {
    let bytes = STANDARD.decode(encoded.trim()).map_err(|_| JitDecodeError::Malformed)?;
    let outer: Value = serde_json::from_slice(&bytes).map_err(|_| JitDecodeError::Malformed)?;
    let runner = inner(&outer, ".runner")?;
    let creds = inner(&outer, ".credentials")?;
    let rsa = inner(&outer, ".credentials_rsaparams")?;
    let str_of = |v: &Value, k: &'static str| -> Result<String, JitDecodeError> {
        v.get(k).and_then(Value::as_str).map(str::to_string).ok_or(JitDecodeError::Missing(k))
    };
    Ok(JitPayload {
        runner_id: runner.get("AgentId").and_then(Value::as_i64).ok_or(JitDecodeError::Missing("AgentId"))?,
        runner_name: str_of(&runner, "AgentName")?,
        pool_id: runner.get("PoolId").and_then(Value::as_i64).ok_or(JitDecodeError::Missing("PoolId"))?,
        server_url: str_of(&runner, "ServerUrl")?,
        github_url: str_of(&runner, "GitHubUrl")?,
        work_folder: str_of(&runner, "WorkFolder")?,
        client_id: creds
            .get("Data")
            .and_then(|d| d.get("clientId"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(JitDecodeError::Missing("clientId"))?,
        secret: str_of(&rsa, "d")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects_garbage() {
        let p = JitPayload {
            runner_id: 42,
            runner_name: "pool-abcde".into(),
            pool_id: 1,
            server_url: "http://127.0.0.1:1/_services/pipelines".into(),
            github_url: "http://127.0.0.1:1/octo-org".into(),
            work_folder: "_work".into(),
            client_id: "c".into(),
            secret: "s3cr3t".into(),
        };
        let e = encode(&p);
        assert_eq!(decode(&e), Ok(p));
        assert_eq!(decode("not base64!"), Err(JitDecodeError::Malformed));
        let partial = STANDARD.encode(json!({".runner": STANDARD.encode("{}")}).to_string());
        assert!(decode(&partial).is_err());
    }
}
