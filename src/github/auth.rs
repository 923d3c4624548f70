//! GitHub App JWTs (RS256). `iat` is 60 s in the past and `exp` 9 min ahead (GitHub allows at
//! most 10 min); a random `jti` makes two JWTs minted in the same second differ.
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::GithubError;

#[derive(Serialize)]
struct Claims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a str,
    jti: String,
}

/// Mint an App JWT. `issuer` is the App's client id (preferred) or numeric App id. `now` is the
/// wall clock (GitHub checks JWTs against real time).
pub fn mint_app_jwt(issuer: &str, private_key_pem: &str, now: DateTime<Utc>) -> Result<String, GithubError> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.as_bytes()).map_err(|_| {
        GithubError::Auth {
            message: "the GitHub App private key is not a valid RSA PEM".into(),
            permission: None,
        }
    })?;
    let claims = Claims {
        iat: now.timestamp() - 60,
        exp: now.timestamp() + 9 * 60,
        iss: issuer,
        jti: uuid::Uuid::new_v4().simple().to_string(),
    };
    // Numeric App ids go out as numbers, like GitHub's examples; client ids as strings.
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    let token = if let Ok(n) = issuer.parse::<i64>() {
        #[derive(Serialize)]
        struct NumClaims {
            iat: i64,
            exp: i64,
            iss: i64,
            jti: String,
        }
        jsonwebtoken::encode(
            &header,
            &NumClaims { iat: claims.iat, exp: claims.exp, iss: n, jti: claims.jti },
            &key,
        )
    } else {
        jsonwebtoken::encode(&header, &claims, &key)
    };
    token
        .map_err(|e| GithubError::Auth { message: format!("cannot sign the App JWT: {e}"), permission: None })
}
