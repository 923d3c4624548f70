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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_minted_in_the_same_second_differ_and_respect_github_limits() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pem = key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let now = Utc::now();
        let a = mint_app_jwt("12345", &pem, now).unwrap();
        let b = mint_app_jwt("12345", &pem, now).unwrap();
        assert_ne!(a, b);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let public =
            rsa::pkcs8::EncodePublicKey::to_public_key_pem(&key.to_public_key(), rsa::pkcs8::LineEnding::LF)
                .unwrap();
        let dk = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
        let c = jsonwebtoken::decode::<serde_json::Value>(&a, &dk, &v).unwrap().claims;
        assert_eq!(c["iss"], 12345);
        assert_eq!(c["iat"].as_i64().unwrap(), now.timestamp() - 60);
        assert!(c["exp"].as_i64().unwrap() - now.timestamp() <= 600);
        let c =
            jsonwebtoken::decode::<serde_json::Value>(&mint_app_jwt("Iv1.abc", &pem, now).unwrap(), &dk, &v)
                .unwrap()
                .claims;
        assert_eq!(c["iss"], "Iv1.abc");
        assert!(matches!(mint_app_jwt("1", "not a pem", now), Err(GithubError::Auth { .. })));
    }
}
