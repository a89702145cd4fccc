//! DC/OS service-account authentication: sign an RS256 JWT with the account's private key, POST
//! it to the IAM login endpoint, send the returned token as `Authorization: token=<token>`, and
//! log in again before it expires or when Marathon answers 401.
use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::{sync::Mutex, time::Instant};
use tracing::{debug, info};

use super::MarathonError;
use crate::secret::Secret;

/// How long a login token is requested for (marathon-lb: one hour).
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Log in again this long before the token expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Validity of the signed login JWT itself.
const LOGIN_JWT_LIFETIME: Duration = Duration::from_secs(60);

/// A DC/OS service-account credential (`--dcos-auth-credentials`,
/// `DCOS_SERVICE_ACCOUNT_CREDENTIAL`). `Debug` redacts the private key.
#[derive(Clone, Debug, Deserialize)]
pub struct DcosCredentials {
    /// The service account id.
    pub uid: String,
    /// PEM RSA private key (PKCS#1 or PKCS#8).
    pub private_key: Secret,
    /// IAM login URL, e.g. `https://leader.mesos/acs/api/v1/auth/login`.
    pub login_endpoint: String,
}

impl DcosCredentials {
    /// Parses the service-account JSON. A value that does not start with `{` is read as the
    /// path of a file holding that JSON (so the key need not be on the command line).
    pub fn parse(value: &str) -> Result<Self, MarathonError> {
        let trimmed = value.trim_start();
        let (json, source) = if trimmed.starts_with('{') {
            (trimmed.to_owned(), "--dcos-auth-credentials".to_owned())
        } else {
            let text = std::fs::read_to_string(trimmed).map_err(|e| {
                MarathonError::Config(format!("--dcos-auth-credentials file {trimmed}: {e}"))
            })?;
            (text, format!("--dcos-auth-credentials file {trimmed}"))
        };
        // serde_json's error names the position, never echoes the value.
        let creds: DcosCredentials = serde_json::from_str(&json).map_err(|e| {
            MarathonError::Config(format!(
                "{source}: expected JSON {{uid, private_key, login_endpoint}}: {e}"
            ))
        })?;
        if creds.uid.is_empty() || creds.login_endpoint.is_empty() {
            return Err(MarathonError::Config(format!(
                "{source}: uid and login_endpoint must not be empty"
            )));
        }
        Ok(creds)
    }
}

#[derive(Serialize)]
struct LoginJwtClaims<'a> {
    uid: &'a str,
    exp: u64,
}

#[derive(Serialize)]
struct LoginRequest<'a> {
    uid: &'a str,
    token: &'a str,
    exp: u64,
}

#[derive(Deserialize)]
struct LoginResponse {
    token: Option<String>,
}

struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// Holds the signing key and the current login token.
pub struct DcosAuth {
    creds: DcosCredentials,
    key: EncodingKey,
    token: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for DcosAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DcosAuth")
            .field("uid", &self.creds.uid)
            .field("login_endpoint", &self.creds.login_endpoint)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DcosAuth {
    /// Parses the key now, so a bad key is a startup error rather than a login failure later.
    pub fn new(creds: DcosCredentials) -> Result<Self, MarathonError> {
        let uid = creds.uid.clone();
        let config_err = |reason: String| {
            MarathonError::Config(format!(
                "--dcos-auth-credentials uid {uid}: private_key: {reason}"
            ))
        };
        let key = EncodingKey::from_rsa_pem(creds.private_key.expose().as_bytes())
            .map_err(|e| config_err(e.to_string()))?;
        let auth = DcosAuth {
            creds,
            key,
            token: Mutex::new(None),
        };
        // ring parses the key on first use: sign once to report a bad key at startup.
        auth.sign_login_jwt()
            .map_err(|e| config_err(e.to_string()))?;
        Ok(auth)
    }

    fn sign_login_jwt(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = LoginJwtClaims {
            uid: &self.creds.uid,
            exp: unix_now() + LOGIN_JWT_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
    }

    /// The current token, logging in first when there is none or it is about to expire.
    pub async fn token(&self, http: &reqwest::Client) -> Result<Secret, MarathonError> {
        let mut guard = self.token.lock().await;
        if let Some(cached) = guard.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let token = self.login(http).await?;
        *guard = Some(CachedToken {
            token: token.clone(),
            refresh_at: Instant::now() + TOKEN_LIFETIME - REFRESH_MARGIN,
        });
        Ok(token)
    }

    /// Forgets the token (Marathon answered 401): the next request logs in again.
    pub async fn invalidate(&self) {
        debug!(uid = %self.creds.uid, "DC/OS token rejected; logging in again");
        *self.token.lock().await = None;
    }

    async fn login(&self, http: &reqwest::Client) -> Result<Secret, MarathonError> {
        let err = |reason: String| MarathonError::DcosLogin {
            uid: self.creds.uid.clone(),
            endpoint: self.creds.login_endpoint.clone(),
            reason,
        };
        let jwt = self.sign_login_jwt().map_err(|e| err(e.to_string()))?;
        let body = LoginRequest {
            uid: &self.creds.uid,
            token: &jwt,
            exp: unix_now() + TOKEN_LIFETIME.as_secs(),
        };
        let resp = http
            .post(&self.creds.login_endpoint)
            .json(&body)
            .send()
            .await
            .map_err(|e| err(e.without_url().to_string()))?;
        let status = resp.status();
        // The IAM also sets the token as a cookie; marathon-lb reads it from there.
        let cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("dcos-acs-auth-cookie="))
            .map(|v| v.split(';').next().unwrap_or("").to_owned());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| err(e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(err(format!("HTTP {}", status.as_u16())));
        }
        let from_body = serde_json::from_slice::<LoginResponse>(&bytes)
            .ok()
            .and_then(|r| r.token);
        let token = from_body
            .or(cookie)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err("the response has no token".into()))?;
        info!(uid = %self.creds.uid, "logged in to DC/OS");
        Ok(Secret::new(token))
    }
}
