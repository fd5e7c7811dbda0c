//! Tokens: JWTs verified with the `jsonwebtoken` crate, from two kinds of keys.
//!
//! - **The shared secret** (HS256): `FLOWHUB_JWT_SECRET`, or on the embedded default a
//!   secret generated once in the data directory. flowhub signs its own tokens with it
//!   (`flowhub token`, the demo, tests); [`JwtKeys`] signs.
//! - **An identity provider's JWKS** (`FLOWHUB_JWKS_URL`): RSA (RS256; RS384/512 and
//!   PS* when the JWK says so), EC (ES256 on P-256, ES384 on P-384) and Ed25519
//!   (EdDSA) public keys, fetched over HTTPS and cached.
//!
//! # Why the algorithm comes from the key
//! A token's header names its algorithm, but the header is written by whoever made the
//! token. Verifying with "the algorithm the header asks for" is the classic JWT hole:
//! `alg: none`, or `alg: HS256` with an RSA *public* key used as the HMAC secret (anyone
//! can fetch the public key, so anyone could sign). Here every key carries exactly one
//! algorithm, fixed when the key is loaded: HS256 for the shared secret, and for a JWK
//! its declared `alg` if that belongs to the key's type, else the type's default. The
//! header only *selects* a key (by `kid`, else among the keys of its `alg`); the token
//! is then checked with a [`jsonwebtoken::Validation`] that allows that key's single
//! algorithm and nothing else. Symmetric (`oct`) keys in a JWKS are ignored: a secret
//! published in a key set is no secret. `none` and unknown names are refused before
//! any key is looked at.
//!
//! # When HS256 is accepted
//! Without a JWKS URL, always (today's behaviour). With one, only if the operator
//! configured a secret explicitly (`FLOWHUB_JWT_SECRET`) or runs the demo (whose
//! anonymous tokens are HS256): a generated secret lying in the data directory should
//! not silently become a second way in next to the identity provider.
//!
//! # Refresh policy
//! The key set is fetched on first use (and prefetched when the hub starts), then
//! kept for the response's `Cache-Control: max-age` (10 minutes without one),
//! bounded to [min refresh interval, 24 h]. It is fetched again
//! - when it has expired, on the next verification that needs it, and
//! - when a token names a `kid` the cached set does not have (the provider rotated
//!   its keys), at most once per *min refresh interval* (10 s by default,
//!   [`crate::HubConfig::jwks_min_refresh`]) so that tokens with made-up `kid`s cannot
//!   turn the hub into a load generator against the provider.
//!
//! One fetch runs at a time; verifications that need it wait for it (bounded by the
//! HTTP timeout). A failed fetch keeps the previous keys (a provider outage must not
//! log everyone out) and is retried after the min refresh interval.
//!
//! # Claims
//! `exp` is mandatory, `nbf` is honoured, both with a small leeway (30 s by default).
//! `iss` and `aud` must be present and match when configured (for the identity
//! provider's tokens: the shared secret's are flowhub's own and carry neither). Flow roles are read from
//! a configurable claim (`flows` by default; providers put custom claims under a
//! namespaced key such as `https://example.com/flows`); tokens of the shared secret are
//! flowhub's own and always carry them under `flows`. A missing or malformed roles
//! claim gives an identity with no role, never an error. Tokens are never logged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use flowhub_actors::identity::Identity;
use flowhub_protocol::Role;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::HubConfig;

/// Where the tokens flowhub mints (with the shared secret) carry the flow roles.
const OWN_ROLES_CLAIM: &str = "flows";

/// The claims of a verified token, as the hub uses them: the wire form of the tokens
/// flowhub mints, with the flow roles already read from whichever claim carries them
/// (a provider's token may name that claim otherwise). The session's
/// [`Identity`] comes from it (`Identity::from(&claims)`).
pub use flowhub_protocol::Claims;

/// Why a token was refused. The message is the reason a client sees in the 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm: {0}")]
    UnsupportedAlgorithm(String),
    #[error("unknown signing key")]
    UnknownKey,
    #[error("signing keys unavailable: the identity provider's key set could not be fetched")]
    KeysUnavailable,
    #[error("bad token signature")]
    Signature,
    #[error("wrong token issuer")]
    Issuer,
    #[error("wrong token audience")]
    Audience,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token expired")]
    Expired,
}

/// What cannot be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("the JWKS URL `{0}` is not an http:// or https:// URL")]
    JwksUrl(String),
    #[error("cannot build the HTTP client for the JWKS: {0}")]
    HttpClient(#[from] reqwest::Error),
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// jsonwebtoken 10 delegates its cryptography to a process-wide provider. With only
/// the `rust_crypto` feature it would pick RustCrypto by itself, but a dependency
/// enabling `aws_lc_rs` too would turn that into a panic on the first token; naming
/// the provider explicitly keeps verification independent of feature unification.
fn install_crypto_provider() {
    // Err only means a provider is installed already (by us, or deliberately by the
    // embedding program); either is fine.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// Signs tokens with the HS256 shared secret (`flowhub token`, the demo, tests).
#[derive(Clone)]
pub struct JwtKeys {
    secret: Vec<u8>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

impl JwtKeys {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        install_crypto_provider();
        JwtKeys {
            secret: secret.into(),
        }
    }

    /// An HS256 token over `claims` (a [`Claims`] or [`flowhub_protocol::Claims`]).
    pub fn sign(&self, claims: &impl Serialize) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .unwrap_or_else(|e| unreachable!("HS256 over serializable claims cannot fail: {e}"))
    }

    /// Verifies an HS256 token of this secret as a hub with the default settings
    /// would (roles under `flows`, default leeway, no `iss`/`aud` required).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = parse_header(token)?;
        if header.alg != Algorithm::HS256 {
            return Err(mismatch(header.alg, Algorithm::HS256));
        }
        let defaults = HubConfig::default();
        let policy = VerifierInner {
            signer: self.clone(),
            shared: Some(self.verifying_key()),
            jwks: None,
            issuer: None,
            audience: None,
            roles_claim: defaults.jwt_roles_claim,
            leeway_secs: defaults.jwt_leeway.as_secs(),
        };
        let key = self.verifying_key();
        let raw = policy.decode_with(token, &key)?;
        policy.claims_from(raw, &key)
    }

    fn verifying_key(&self) -> VerifyKey {
        VerifyKey {
            kid: None,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(&self.secret),
        }
    }
}

/// A key and the one algorithm it verifies.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl VerifyKey {
    /// HS256 keys are only ever the shared secret: a JWKS `oct` key is refused.
    fn is_shared_secret(&self) -> bool {
        self.alg == Algorithm::HS256
    }
}

/// Verifies tokens from the shared secret and from an identity provider's JWKS, and
/// signs flowhub's own HS256 tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    signer: JwtKeys,
    /// The HS256 key, when HS256 tokens are accepted (see the module doc).
    shared: Option<VerifyKey>,
    jwks: Option<JwksCache>,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: String,
    leeway_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.inner.shared.is_some())
            .field("jwks_url", &self.inner.jwks.as_ref().map(|j| &j.url))
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("roles_claim", &self.inner.roles_claim)
            .finish()
    }
}

impl Verifier {
    /// The verifier `config` describes; `keys` holds the resolved shared secret.
    pub fn new(config: &HubConfig, keys: JwtKeys) -> Result<Verifier, AuthSetupError> {
        install_crypto_provider();
        let jwks = match config.jwks_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Some(JwksCache::new(url, config.jwks_min_refresh)?),
            None => None,
        };
        let accept_hs256 = jwks.is_none() || config.jwt_secret.is_some() || config.demo;
        let roles_claim = if config.jwt_roles_claim.is_empty() {
            "flows".to_owned()
        } else {
            config.jwt_roles_claim.clone()
        };
        Ok(Verifier {
            inner: Arc::new(VerifierInner {
                shared: accept_hs256.then(|| keys.verifying_key()),
                signer: keys,
                jwks,
                issuer: config.jwt_issuer.clone().filter(|s| !s.is_empty()),
                audience: config.jwt_audience.clone().filter(|s| !s.is_empty()),
                roles_claim,
                leeway_secs: config.jwt_leeway.as_secs(),
            }),
        })
    }

    /// An HS256 token signed with the shared secret.
    pub fn sign(&self, claims: &impl Serialize) -> String {
        self.inner.signer.sign(claims)
    }

    /// Fetches the identity provider's keys now (when the hub starts), so that the
    /// first token does not wait for it and a wrong URL shows in the log at once.
    pub async fn prefetch(&self) {
        if let Some(jwks) = &self.inner.jwks {
            jwks.refresh().await;
        }
    }

    /// The claims `token` proves, or why it proves nothing.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let result = self.verify_inner(token).await;
        if let Err(e) = &result {
            // The reason only: a token is a credential and never goes to the log.
            tracing::debug!(reason = %e, "token refused");
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<Claims, AuthError> {
        let header = parse_header(token)?;
        let candidates = self.keys_for(&header).await?;
        let mut last = AuthError::UnknownKey;
        for key in &candidates {
            match self.inner.decode_with(token, key) {
                Ok(raw) => return self.inner.claims_from(raw, key),
                // Without a `kid` several keys of the algorithm may be candidates:
                // a bad signature means "not this one".
                Err(AuthError::Signature) => last = AuthError::Signature,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The keys that may have signed a token with this header, each of which will be
    /// used with its own algorithm only.
    async fn keys_for(&self, header: &TokenHeader) -> Result<Vec<VerifyKey>, AuthError> {
        let inner = &self.inner;
        if header.alg == Algorithm::HS256 {
            // A `kid` naming a provider key with `alg: HS256` is the confusion attack:
            // say so instead of trying the shared secret.
            if let (Some(kid), Some(jwks)) = (&header.kid, &inner.jwks) {
                if let Some(key) = jwks
                    .snapshot()
                    .keys
                    .iter()
                    .find(|k| k.kid.as_ref() == Some(kid))
                {
                    return Err(mismatch(header.alg, key.alg));
                }
            }
            return match &inner.shared {
                Some(shared) => Ok(vec![shared.clone()]),
                None => Err(AuthError::UnsupportedAlgorithm(
                    "HS256 (shared-secret tokens are off: keys come from the identity provider)"
                        .into(),
                )),
            };
        }
        match &inner.jwks {
            Some(jwks) => jwks.candidates(header).await,
            None => Err(AuthError::UnsupportedAlgorithm(format!(
                "{:?} (no identity provider key set is configured)",
                header.alg
            ))),
        }
    }
}

impl VerifierInner {
    fn decode_with(&self, token: &str, key: &VerifyKey) -> Result<Map<String, Value>, AuthError> {
        let inner = self;
        let mut validation = Validation::new(key.alg);
        validation.leeway = inner.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        // `iss` and `aud` name the identity provider and us as its audience; the
        // shared secret's tokens are flowhub's own and carry neither.
        let (issuer, audience) = if key.is_shared_secret() {
            (None, None)
        } else {
            (inner.issuer.as_ref(), inner.audience.as_ref())
        };
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            // jsonwebtoken checks `iss` only when the token has one.
            required.push("iss");
        }
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Not configured: `aud` is not ours to judge (jsonwebtoken would otherwise
            // refuse every token that has one).
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| auth_error_of(e.into_kind()))
    }

    fn claims_from(
        &self,
        mut raw: Map<String, Value>,
        key: &VerifyKey,
    ) -> Result<Claims, AuthError> {
        let sub = match raw.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(AuthError::MissingClaim("sub".into())),
        };
        // jsonwebtoken has checked that `exp` is there and numeric (an integer or a float).
        let exp = match raw.get("exp") {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
                .ok_or(AuthError::Malformed("exp is not a number of seconds"))?,
            _ => return Err(AuthError::MissingClaim("exp".into())),
        };
        let name = match raw.get("name") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let svc = matches!(raw.get("svc"), Some(Value::Bool(true)));
        // The shared secret's tokens are minted by flowhub, with the roles under `flows`.
        let roles_claim = if key.is_shared_secret() {
            OWN_ROLES_CLAIM
        } else {
            self.roles_claim.as_str()
        };
        let flows = match raw.remove(roles_claim) {
            None => HashMap::new(),
            Some(value) => roles_of(value).unwrap_or_else(|| {
                tracing::debug!(
                    claim = %roles_claim,
                    "roles claim is not an object of flow id to role: no role"
                );
                HashMap::new()
            }),
        };
        Ok(Claims {
            sub,
            name,
            exp,
            flows,
            svc,
        })
    }
}

#[async_trait::async_trait]
impl flowhub_actors::identity::TokenVerifier for Verifier {
    async fn verify(&self, token: &str) -> Result<Identity, String> {
        Verifier::verify(self, token)
            .await
            .map(|c| Identity::from(&c))
            .map_err(|e| e.to_string())
    }
}

/// `{"flow-id": "editor", "*": "viewer"}`, or `None` when the claim has another shape.
fn roles_of(value: Value) -> Option<HashMap<String, Role>> {
    serde_json::from_value(value).ok()
}

fn mismatch(token_alg: Algorithm, key_alg: Algorithm) -> AuthError {
    AuthError::UnsupportedAlgorithm(format!(
        "the token says {token_alg:?} but its key is for {key_alg:?}"
    ))
}

fn auth_error_of(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => {
            AuthError::UnsupportedAlgorithm("does not match the key".into())
        }
        ErrorKind::InvalidClaimFormat(_) => AuthError::Malformed("a time claim is not a number"),
        // Keys are checked when loaded; one that still does not fit cannot have signed.
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => AuthError::Signature,
        _ => AuthError::Malformed("not a JWT"),
    }
}

/// What the header says, read before any key is chosen.
struct TokenHeader {
    alg: Algorithm,
    kid: Option<String>,
}

fn parse_header(token: &str) -> Result<TokenHeader, AuthError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url"))?;
    let raw: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("header is not JSON with an alg"))?;
    let alg = match raw.alg.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "none" | "None" | "NONE" => {
            return Err(AuthError::UnsupportedAlgorithm(
                "none (unsigned tokens are refused)".into(),
            ))
        }
        // Echo only what is plainly an algorithm name, never arbitrary header text.
        other if other.len() <= 16 && other.chars().all(|c| c.is_ascii_alphanumeric()) => {
            return Err(AuthError::UnsupportedAlgorithm(other.to_owned()))
        }
        _ => return Err(AuthError::UnsupportedAlgorithm("unknown".into())),
    };
    Ok(TokenHeader { alg, kid: raw.kid })
}

/// Keys are kept this long when the JWKS response has no `max-age`.
const DEFAULT_JWKS_TTL: Duration = Duration::from_secs(600);
/// Keys are never kept longer than this, whatever `max-age` says.
const MAX_JWKS_TTL: Duration = Duration::from_secs(24 * 3600);
/// A key set is a few kilobytes; anything much larger is not one.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Without a `kid`, at most this many keys of the token's algorithm are tried.
const MAX_CANDIDATES: usize = 4;

#[derive(Debug, thiserror::Error)]
enum JwksError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("response larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWK set: {0}")]
    Json(#[from] serde_json::Error),
}

/// The identity provider's keys, fetched and cached (see the module doc).
struct JwksCache {
    url: String,
    client: reqwest::Client,
    min_refresh: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch started. Held across the fetch: one fetch at a time.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

struct KeySet {
    keys: Vec<VerifyKey>,
    /// Whether any fetch ever succeeded.
    loaded: bool,
    /// After this, the next verification fetches the set again.
    expires_at: Instant,
}

impl JwksCache {
    fn new(url: &str, min_refresh: Duration) -> Result<JwksCache, AuthSetupError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(AuthSetupError::JwksUrl(url.to_owned()));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(JwksCache {
            url: url.to_owned(),
            client,
            min_refresh,
            keys: RwLock::new(Arc::new(KeySet {
                keys: Vec::new(),
                loaded: false,
                expires_at: Instant::now(),
            })),
            last_attempt: tokio::sync::Mutex::new(None),
        })
    }

    fn snapshot(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn candidates(&self, header: &TokenHeader) -> Result<Vec<VerifyKey>, AuthError> {
        let mut set = self.snapshot();
        if !set.loaded || Instant::now() >= set.expires_at {
            self.refresh().await;
            set = self.snapshot();
        }
        match select(&set, header) {
            Selection::Found(keys) => return Ok(keys),
            Selection::Mismatch(key_alg) => return Err(mismatch(header.alg, key_alg)),
            Selection::NotFound => {}
        }
        // Perhaps the provider rotated: look again (rate-limited inside `refresh`).
        self.refresh().await;
        let set = self.snapshot();
        match select(&set, header) {
            Selection::Found(keys) => Ok(keys),
            Selection::Mismatch(key_alg) => Err(mismatch(header.alg, key_alg)),
            Selection::NotFound if !set.loaded => Err(AuthError::KeysUnavailable),
            Selection::NotFound => Err(AuthError::UnknownKey),
        }
    }

    /// Fetches the set again unless a fetch started less than the min refresh interval
    /// ago (then whatever that fetch brought is what there is).
    async fn refresh(&self) {
        let mut last_attempt = self.last_attempt.lock().await;
        if last_attempt.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok((keys, max_age)) => {
                let ttl = max_age
                    .unwrap_or(DEFAULT_JWKS_TTL)
                    .clamp(self.min_refresh, MAX_JWKS_TTL.max(self.min_refresh));
                tracing::info!(url = %self.url, keys = keys.len(), ttl_secs = ttl.as_secs(), "JWKS fetched");
                let set = Arc::new(KeySet {
                    keys,
                    loaded: true,
                    expires_at: Instant::now() + ttl,
                });
                match self.keys.write() {
                    Ok(mut keys) => *keys = set,
                    Err(poisoned) => *poisoned.into_inner() = set,
                }
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "cannot fetch the JWKS; keeping the keys we have");
            }
        }
    }

    async fn fetch(&self) -> Result<(Vec<VerifyKey>, Option<Duration>), JwksError> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await?
            .error_for_status()?;
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age_of);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        // Keys one by one: a key of a type we do not know must not hide the others.
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let raw: RawSet = serde_json::from_slice(&body)?;
        let mut keys = Vec::new();
        for value in raw.keys {
            match verify_key_of(value) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::warn!(url = %self.url, why, "JWKS key skipped"),
            }
        }
        Ok((keys, max_age))
    }
}

enum Selection {
    Found(Vec<VerifyKey>),
    /// The `kid` names a key, of another algorithm.
    Mismatch(Algorithm),
    NotFound,
}

fn select(set: &KeySet, header: &TokenHeader) -> Selection {
    match &header.kid {
        Some(kid) => {
            let named: Vec<&VerifyKey> = set
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect();
            let usable: Vec<VerifyKey> = named
                .iter()
                .filter(|k| k.alg == header.alg)
                .map(|k| (*k).clone())
                .collect();
            match (usable.is_empty(), named.first()) {
                (false, _) => Selection::Found(usable),
                (true, Some(key)) => Selection::Mismatch(key.alg),
                (true, None) => Selection::NotFound,
            }
        }
        None => {
            let usable: Vec<VerifyKey> = set
                .keys
                .iter()
                .filter(|k| k.alg == header.alg)
                .take(MAX_CANDIDATES)
                .cloned()
                .collect();
            if usable.is_empty() {
                Selection::NotFound
            } else {
                Selection::Found(usable)
            }
        }
    }
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as 0.
fn max_age_of(cache_control: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            max_age = secs.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    max_age
}

/// The key a JWK describes, with the one algorithm it will verify; or why it is skipped.
fn verify_key_of(value: Value) -> Result<VerifyKey, &'static str> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "not a JWK of a known type")?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("an encryption key");
    }
    let declared = jwk.common.key_algorithm;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let alg = match declared {
                None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                Some(KeyAlgorithm::PS256) => Algorithm::PS256,
                Some(KeyAlgorithm::PS384) => Algorithm::PS384,
                Some(KeyAlgorithm::PS512) => Algorithm::PS512,
                Some(_) => return Err("an RSA key for another algorithm"),
            };
            let modulus = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| "an RSA modulus that is not base64url")?;
            let bits =
                modulus.len() * 8 - modulus.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < 2048 {
                return Err("an RSA key shorter than 2048 bits");
            }
            alg
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (alg, len) = match (&ec.curve, declared) {
                (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => (Algorithm::ES256, 32),
                (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => (Algorithm::ES384, 48),
                _ => return Err("an EC key of an unsupported curve or algorithm"),
            };
            if coordinate_len(&ec.x) != Some(len) || coordinate_len(&ec.y) != Some(len) {
                return Err("an EC key with coordinates of the wrong size");
            }
            alg
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519
                || !matches!(declared, None | Some(KeyAlgorithm::EdDSA))
            {
                return Err("an OKP key that is not Ed25519");
            }
            // jsonwebtoken slices the first 32 bytes: a shorter key would panic there.
            if coordinate_len(&okp.x) != Some(32) {
                return Err("an Ed25519 key that is not 32 bytes");
            }
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key (a published secret is no secret)")
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "a key jsonwebtoken cannot read")?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

fn coordinate_len(b64: &str) -> Option<usize> {
    URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()
        .map(|bytes| bytes.len())
}

/// Parses `30s`, `15m`, `1h`, `7d` or plain seconds.
pub fn parse_ttl(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            name: Some("Alice".into()),
            exp,
            flows: [("demo".to_string(), Role::Editor)].into(),
            svc: false,
        }
    }

    fn keyset(keys: Vec<VerifyKey>) -> KeySet {
        KeySet {
            keys,
            loaded: true,
            expires_at: Instant::now() + Duration::from_secs(60),
        }
    }

    fn header(alg: Algorithm, kid: Option<&str>) -> TokenHeader {
        TokenHeader {
            alg,
            kid: kid.map(str::to_owned),
        }
    }

    fn verifier(config: &HubConfig, secret: &str) -> Verifier {
        Verifier::new(config, JwtKeys::new(secret)).unwrap()
    }

    #[test]
    fn sign_verify_roundtrip() {
        let keys = JwtKeys::new("s3cret");
        let exp = now_secs() + 600;
        let t = keys.sign(&claims(exp));
        assert_eq!(keys.verify(&t).unwrap(), claims(exp));
    }

    #[test]
    fn rejects_expired_forged_tampered_and_malformed() {
        let keys = JwtKeys::new("s3cret");
        // Beyond the 30 s leeway.
        let old = keys.sign(&claims(now_secs() - 120));
        assert_eq!(keys.verify(&old), Err(AuthError::Expired));
        let t = keys.sign(&claims(now_secs() + 600));
        assert_eq!(JwtKeys::new("other").verify(&t), Err(AuthError::Signature));
        assert!(matches!(keys.verify("a.b"), Err(AuthError::Malformed(_))));
        assert!(matches!(keys.verify(""), Err(AuthError::Malformed(_))));
        let mut parts: Vec<&str> = t.split('.').collect();
        let evil =
            URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","exp":9999999999,"flows":{"*":"owner"}}"#);
        parts[1] = &evil;
        assert_eq!(keys.verify(&parts.join(".")), Err(AuthError::Signature));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(matches!(
            keys.verify(&none),
            Err(AuthError::UnsupportedAlgorithm(why)) if why.starts_with("none")
        ));
    }

    #[test]
    fn header_algorithm_names_are_checked_before_any_key() {
        let token = |h: &str| format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(h));
        for (h, expect) in [
            (r#"{"alg":"none"}"#, "none (unsigned tokens are refused)"),
            (r#"{"alg":"HS999"}"#, "HS999"),
            (r#"{"alg":"<script>alert(1)</script>"}"#, "unknown"),
        ] {
            assert_eq!(
                parse_header(&token(h)).err(),
                Some(AuthError::UnsupportedAlgorithm(expect.into()))
            );
        }
        let h = parse_header(&token(r#"{"alg":"EdDSA","kid":"k1"}"#)).unwrap();
        assert_eq!((h.alg, h.kid.as_deref()), (Algorithm::EdDSA, Some("k1")));
        assert!(matches!(
            parse_header(&token(r#"{"kid":"k1"}"#)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn keys_are_selected_by_kid_and_used_with_their_own_algorithm_only() {
        let rsa = VerifyKey {
            kid: Some("r".into()),
            alg: Algorithm::RS256,
            key: DecodingKey::from_rsa_raw_components(&[1; 256], &[1, 0, 1]),
        };
        let ed = VerifyKey {
            kid: Some("e".into()),
            alg: Algorithm::EdDSA,
            key: DecodingKey::from_ed_der(&[0; 32]),
        };
        let set = keyset(vec![rsa, ed]);
        assert!(
            matches!(select(&set, &header(Algorithm::RS256, Some("r"))), Selection::Found(k) if k.len() == 1)
        );
        assert!(matches!(
            select(&set, &header(Algorithm::HS256, Some("r"))),
            Selection::Mismatch(Algorithm::RS256)
        ));
        assert!(matches!(
            select(&set, &header(Algorithm::RS256, Some("e"))),
            Selection::Mismatch(Algorithm::EdDSA)
        ));
        assert!(matches!(
            select(&set, &header(Algorithm::RS256, Some("x"))),
            Selection::NotFound
        ));
        assert!(
            matches!(select(&set, &header(Algorithm::EdDSA, None)), Selection::Found(k) if k[0].kid.as_deref() == Some("e"))
        );
        assert!(matches!(
            select(&set, &header(Algorithm::ES256, None)),
            Selection::NotFound
        ));
    }

    #[test]
    fn jwks_entries_that_could_confuse_or_crash_are_skipped() {
        // 0xC1: the top bit set, so 256 bytes are a full 2048-bit modulus.
        let b64 = |n: usize| URL_SAFE_NO_PAD.encode(vec![0xC1u8; n]);
        // A symmetric key in a key set: anyone can read it.
        assert!(verify_key_of(serde_json::json!({"kty":"oct","k":b64(32),"kid":"s"})).is_err());
        // An Ed25519 key shorter than 32 bytes would panic in jsonwebtoken.
        assert!(
            verify_key_of(serde_json::json!({"kty":"OKP","crv":"Ed25519","x":b64(8)})).is_err()
        );
        // An encryption key, a short RSA key, an RSA key declared for ES256.
        assert!(verify_key_of(
            serde_json::json!({"kty":"RSA","use":"enc","n":b64(256),"e":"AQAB"})
        )
        .is_err());
        assert!(verify_key_of(serde_json::json!({"kty":"RSA","n":b64(128),"e":"AQAB"})).is_err());
        assert!(verify_key_of(
            serde_json::json!({"kty":"RSA","alg":"ES256","n":b64(256),"e":"AQAB"})
        )
        .is_err());
        assert!(verify_key_of(
            serde_json::json!({"kty":"EC","crv":"P-256","x":b64(31),"y":b64(32)})
        )
        .is_err());
        assert!(verify_key_of(serde_json::json!({"kty":"AKP","x":"1"})).is_err());
        // Usable keys get the algorithm of their type (or their declared one).
        let key = |v| verify_key_of(v).map(|k| (k.alg, k.kid));
        assert_eq!(
            key(serde_json::json!({"kty":"RSA","kid":"r","n":b64(256),"e":"AQAB"})),
            Ok((Algorithm::RS256, Some("r".into())))
        );
        assert_eq!(
            key(serde_json::json!({"kty":"RSA","alg":"PS256","n":b64(256),"e":"AQAB"})),
            Ok((Algorithm::PS256, None))
        );
        assert_eq!(
            key(serde_json::json!({"kty":"OKP","crv":"Ed25519","x":b64(32)})),
            Ok((Algorithm::EdDSA, None))
        );
        assert_eq!(
            key(serde_json::json!({"kty":"EC","crv":"P-256","x":b64(32),"y":b64(32)})),
            Ok((Algorithm::ES256, None))
        );
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age_of("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age_of("Max-Age=5, must-revalidate"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(max_age_of("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age_of("public"), None);
        assert_eq!(max_age_of("max-age=soon"), None);
    }

    #[tokio::test]
    async fn roles_come_from_the_configured_claim_and_malformed_roles_mean_none() {
        let config = HubConfig {
            jwt_roles_claim: "https://example.com/flows".into(),
            ..HubConfig::default()
        };
        let v = verifier(&config, "s");
        let inner = &v.inner;
        let provider_key = VerifyKey {
            kid: None,
            alg: Algorithm::RS256,
            key: DecodingKey::from_rsa_raw_components(&[1; 256], &[1, 0, 1]),
        };
        let raw = |value: Value| value.as_object().unwrap().clone();
        let c = inner
            .claims_from(
                raw(serde_json::json!({"sub":"u","exp":5,"https://example.com/flows":{"f":"owner"},"flows":{"g":"owner"}})),
                &provider_key,
            )
            .unwrap();
        assert_eq!(c.flows, [("f".to_string(), Role::Owner)].into());
        assert_eq!(Identity::from(&c).name, "u", "name defaults to sub");
        for bad in [
            serde_json::json!("owner"),
            serde_json::json!({"f":"root"}),
            serde_json::json!(null),
        ] {
            let c = inner
                .claims_from(
                    raw(serde_json::json!({"sub":"u","exp":5,"https://example.com/flows":bad})),
                    &provider_key,
                )
                .unwrap();
            assert!(c.flows.is_empty());
        }
        // svc must be a real `true`; a non-string name is ignored.
        let c = inner
            .claims_from(
                raw(serde_json::json!({"sub":"u","exp":5.7,"svc":"true","name":3})),
                &provider_key,
            )
            .unwrap();
        assert!(!c.svc && c.name.is_none() && c.exp == 5);
        // Shared-secret tokens are flowhub's own: roles under `flows`.
        let shared = JwtKeys::new("s").verifying_key();
        let c = inner
            .claims_from(
                raw(serde_json::json!({"sub":"u","exp":5,"flows":{"g":"viewer"}})),
                &shared,
            )
            .unwrap();
        assert_eq!(c.flows, [("g".to_string(), Role::Viewer)].into());
    }

    #[tokio::test]
    async fn hs256_is_accepted_with_a_provider_only_when_a_secret_is_configured() {
        let token = JwtKeys::new("s").sign(&claims(now_secs() + 600));
        let without_provider = verifier(&HubConfig::default(), "s");
        assert!(without_provider.verify(&token).await.is_ok());
        let provider = HubConfig {
            jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
            ..HubConfig::default()
        };
        assert!(matches!(
            verifier(&provider, "s").verify(&token).await,
            Err(AuthError::UnsupportedAlgorithm(why)) if why.starts_with("HS256")
        ));
        let explicit = HubConfig {
            jwt_secret: Some("s".into()),
            ..provider.clone()
        };
        assert!(verifier(&explicit, "s").verify(&token).await.is_ok());
        let demo = HubConfig {
            demo: true,
            ..provider
        };
        assert!(verifier(&demo, "s").verify(&token).await.is_ok());
        assert!(matches!(
            Verifier::new(
                &HubConfig {
                    jwks_url: Some("file:///etc/passwd".into()),
                    ..HubConfig::default()
                },
                JwtKeys::new("s")
            ),
            Err(AuthSetupError::JwksUrl(_))
        ));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Some(3600));
        assert_eq!(parse_ttl("90"), Some(90));
        assert_eq!(parse_ttl("15m"), Some(900));
        assert_eq!(parse_ttl("2d"), Some(172800));
        assert_eq!(parse_ttl("1y"), None);
        assert_eq!(parse_ttl("h"), None);
    }
}
