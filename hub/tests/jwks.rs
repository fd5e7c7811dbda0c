//! Tokens from an identity provider: a JWKS served by the test (RSA, Ed25519 and P-256
//! keys from `tests/fixtures/`), keys picked by `kid`, rotation without a restart,
//! and every refusal a 401 with a JSON reason: unknown key, bad signature, wrong
//! issuer or audience, not yet valid, expired, `alg: none`, algorithm confusion.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use flowhub::auth::now_secs;
use flowhub::{Hub, HubConfig};
use flowhub_protocol::{ClientMessage, ErrorCode, Role, ServerMessage};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;

const ISSUER: &str = "https://id.flowhub.test/";
const AUDIENCE: &str = "flowhub-test";
const ROLES_CLAIM: &str = "https://flowhub.test/flows";
const WAIT: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn jwk(name: &str) -> Value {
    serde_json::from_str(&fixture(&format!("{name}.jwk.json"))).unwrap()
}

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa-1.pem").as_bytes()).unwrap()
}
fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa-2.pem").as_bytes()).unwrap()
}
fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(fixture("ed25519.pem").as_bytes()).unwrap()
}
fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(fixture("p256.pem").as_bytes()).unwrap()
}

/// Claims as the provider issues them: roles under the namespaced claim.
fn provider_claims(sub: &str, flows: Value) -> Value {
    json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now_secs(),
        "exp": now_secs() + 600,
        ROLES_CLAIM: flows,
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// The identity provider's key set endpoint: its document can be swapped (rotation)
/// and it counts how often it is fetched.
#[derive(Clone)]
struct Provider {
    jwks: Arc<Mutex<Value>>,
    cache_control: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    url: String,
}

impl Provider {
    async fn start(keys: &[&str], cache_control: &str) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let provider = Provider {
            jwks: Arc::new(Mutex::new(Value::Null)),
            cache_control: Arc::new(Mutex::new(cache_control.to_owned())),
            fetches: Arc::new(AtomicUsize::new(0)),
            url,
        };
        provider.serve_keys(keys);
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve_jwks))
            .with_state(provider.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        provider
    }

    fn serve_keys(&self, keys: &[&str]) {
        let keys: Vec<Value> = keys.iter().map(|k| jwk(k)).collect();
        *self.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn serve_jwks(State(p): State<Provider>) -> impl IntoResponse {
    p.fetches.fetch_add(1, Ordering::SeqCst);
    let body = p.jwks.lock().unwrap().to_string();
    let cache_control = p.cache_control.lock().unwrap().clone();
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CACHE_CONTROL, cache_control),
        ],
        body,
    )
}

fn provider_config(dir: &std::path::Path, provider: &Provider) -> HubConfig {
    let mut cfg = config(dir, None);
    cfg.jwks_url = Some(provider.url.clone());
    cfg.jwt_issuer = Some(ISSUER.into());
    cfg.jwt_audience = Some(AUDIENCE.into());
    cfg.jwt_roles_claim = ROLES_CLAIM.into();
    cfg.jwt_leeway = Duration::from_secs(30);
    cfg.jwks_min_refresh = Duration::from_millis(300);
    cfg
}

fn http(hub: &Hub) -> String {
    format!("http://{}", hub.addr())
}

/// The status and JSON body of `GET /v1/flows/{flow}` with a bearer token.
async fn get_flow(hub: &Hub, flow: &str, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/flows/{flow}", http(hub)))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Asserts the token gets past authentication (a role on `f`: 200 or 404, the flow
/// may not exist yet).
async fn assert_accepted(hub: &Hub, token: &str, what: &str) {
    let (status, body) = get_flow(hub, "f", token).await;
    assert!(
        status == 200 || status == 404,
        "{what}: expected 200/404, got {status} {body}"
    );
}

/// Asserts a 401 with the JSON error body; returns the reason.
async fn refusal(hub: &Hub, token: &str) -> String {
    let (status, body) = get_flow(hub, "f", token).await;
    assert_eq!(status, 401, "expected 401, got {status} {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

async fn assert_refused(hub: &Hub, token: &str, reason: &str) {
    let message = refusal(hub, token).await;
    assert!(
        message.contains(reason),
        "expected a reason containing {reason:?}, got {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_every_provider_key_type_are_accepted_over_http_and_websocket() {
    let provider = Provider::start(&["rsa-1", "ed25519", "p256"], "max-age=300").await;
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(provider_config(dir.path(), &provider))
        .await
        .unwrap();
    let editor = json!({"f": "editor"});
    let tokens = [
        (
            "RS256",
            sign(
                Algorithm::RS256,
                Some("rsa-2024"),
                &rsa1(),
                &provider_claims("rosa", editor.clone()),
            ),
        ),
        (
            "EdDSA",
            sign(
                Algorithm::EdDSA,
                Some("ed-2024"),
                &ed(),
                &provider_claims("edna", editor.clone()),
            ),
        ),
        (
            "ES256",
            sign(
                Algorithm::ES256,
                Some("ec-2024"),
                &ec(),
                &provider_claims("elise", editor.clone()),
            ),
        ),
        // No `kid`: the keys of the token's algorithm are candidates.
        (
            "RS256 without kid",
            sign(
                Algorithm::RS256,
                None,
                &rsa1(),
                &provider_claims("rosa", editor.clone()),
            ),
        ),
    ];
    for (what, token) in &tokens {
        assert_accepted(&hub, token, what).await;
    }
    // The role comes from the namespaced claim: no role on another flow.
    let (status, body) = get_flow(&hub, "other", &tokens[0].1).await;
    assert_eq!(status, 403, "{body}");
    // A WebSocket session on an Ed25519 token, with the provider's identity and role.
    let mut ws = RawClient::connect(&hub.ws_url(), &tokens[1].1).await;
    ws.subscribe("f").await;
    // reauth (the session's async TokenVerifier) with a fresh RS256... of the same user.
    let again = sign(
        Algorithm::EdDSA,
        Some("ed-2024"),
        &ed(),
        &provider_claims("edna", editor.clone()),
    );
    ws.send(&ClientMessage::Reauth {
        id: Some(7u64.into()),
        token: again,
    })
    .await;
    let ack = ws
        .until(WAIT, |m| {
            matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. })
        })
        .await;
    assert!(
        matches!(ack, Some(ServerMessage::Ack { .. })),
        "reauth: {ack:?}"
    );
    // A reauth with a token of an unknown key is refused on the session.
    let stranger = sign(
        Algorithm::RS256,
        Some("stranger"),
        &rsa2(),
        &provider_claims("edna", editor),
    );
    ws.send(&ClientMessage::Reauth {
        id: Some(8u64.into()),
        token: stranger,
    })
    .await;
    let err = ws
        .until(WAIT, |m| {
            matches!(m, ServerMessage::Ack { .. } | ServerMessage::Error { .. })
        })
        .await;
    match err {
        Some(ServerMessage::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert!(message.contains("unknown signing key"), "{message}");
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    // flowhub's own HS256 tokens (explicit secret) still work next to the provider.
    assert_accepted(
        &hub,
        &token("local", &[("f", Role::Editor)]),
        "HS256 shared secret",
    )
    .await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_401_with_a_json_reason() {
    let provider = Provider::start(&["rsa-1", "ed25519"], "max-age=300").await;
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(provider_config(dir.path(), &provider))
        .await
        .unwrap();
    let flows = json!({"f": "owner"});
    let with = |patch: Value| {
        let mut claims = provider_claims("mallory", flows.clone());
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    };
    let rs = |claims: &Value| sign(Algorithm::RS256, Some("rsa-2024"), &rsa1(), claims);

    // The baseline is accepted, so each refusal below is for its one difference.
    assert_accepted(&hub, &rs(&with(json!({}))), "baseline").await;
    // Inside the 30 s leeway: accepted.
    assert_accepted(
        &hub,
        &rs(&with(json!({"nbf": now_secs() + 10}))),
        "nbf within leeway",
    )
    .await;
    assert_accepted(
        &hub,
        &rs(&with(json!({"exp": now_secs() - 10}))),
        "exp within leeway",
    )
    .await;

    let unknown_kid = sign(
        Algorithm::RS256,
        Some("stranger"),
        &rsa2(),
        &with(json!({})),
    );
    assert_refused(&hub, &unknown_kid, "unknown signing key").await;
    let wrong_key_known_kid = sign(
        Algorithm::RS256,
        Some("rsa-2024"),
        &rsa2(),
        &with(json!({})),
    );
    assert_refused(&hub, &wrong_key_known_kid, "bad token signature").await;
    let no_kid_wrong_key = sign(Algorithm::RS256, None, &rsa2(), &with(json!({})));
    assert_refused(&hub, &no_kid_wrong_key, "bad token signature").await;
    assert_refused(
        &hub,
        &rs(&with(json!({"iss": "https://evil.test/"}))),
        "wrong token issuer",
    )
    .await;
    assert_refused(
        &hub,
        &rs(&with(json!({"iss": null}))),
        "lacks the `iss` claim",
    )
    .await;
    assert_refused(
        &hub,
        &rs(&with(json!({"aud": "someone-else"}))),
        "wrong token audience",
    )
    .await;
    assert_refused(
        &hub,
        &rs(&with(json!({"aud": null}))),
        "lacks the `aud` claim",
    )
    .await;
    assert_refused(
        &hub,
        &rs(&with(json!({"nbf": now_secs() + 120}))),
        "token not yet valid",
    )
    .await;
    assert_refused(
        &hub,
        &rs(&with(json!({"exp": now_secs() - 120}))),
        "token expired",
    )
    .await;
    assert_refused(
        &hub,
        &rs(&with(json!({"exp": null}))),
        "lacks the `exp` claim",
    )
    .await;
    assert_refused(
        &hub,
        &rs(&with(json!({"sub": null}))),
        "lacks the `sub` claim",
    )
    .await;
    // A tampered payload under a valid signature.
    let good = rs(&with(json!({})));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(with(json!({"sub": "admin"})).to_string());
    assert_refused(&hub, &parts.join("."), "bad token signature").await;

    // alg: none, with and without a signature part.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(with(json!({})).to_string());
    assert_refused(
        &hub,
        &format!("{none_header}.{payload}."),
        "unsupported token algorithm: none",
    )
    .await;
    assert_refused(
        &hub,
        &format!("{none_header}.{payload}.{}", parts[2]),
        "unsupported token algorithm: none",
    )
    .await;
    // Algorithm confusion: HS256 with the RSA public key's PEM bytes as the secret.
    let public_pem = fixture("rsa-1.pub.pem");
    let hmac_with_public_key = EncodingKey::from_secret(public_pem.as_bytes());
    let confused = sign(
        Algorithm::HS256,
        Some("rsa-2024"),
        &hmac_with_public_key,
        &with(json!({})),
    );
    assert_refused(&hub, &confused, "unsupported token algorithm").await;
    // Without a kid it can only be tried against the shared secret, which it is not.
    let confused = sign(
        Algorithm::HS256,
        None,
        &hmac_with_public_key,
        &with(json!({})),
    );
    assert_refused(&hub, &confused, "bad token signature").await;
    // An Ed25519 key named by kid is not used for RS256 (and vice versa).
    let wrong_alg = sign(Algorithm::RS256, Some("ed-2024"), &rsa1(), &with(json!({})));
    assert_refused(&hub, &wrong_alg, "unsupported token algorithm").await;
    // HS384/HS512 are never accepted.
    let hs512 = sign(
        Algorithm::HS512,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &with(json!({})),
    );
    assert_refused(&hub, &hs512, "unsupported token algorithm").await;
    assert_refused(&hub, "not.a.jwt", "malformed token").await;
    assert_refused(&hub, "garbage", "malformed token").await;

    // Over the WebSocket upgrade as well: a 401 before any session.
    let err =
        tokio_tungstenite::connect_async(format!("{}/v1/ws?token={unknown_kid}", hub.ws_url()))
            .await
            .expect_err("no session on a refused token");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected an HTTP 401, got {other}"),
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_roles_claim_is_an_identity_without_roles() {
    let provider = Provider::start(&["rsa-1"], "max-age=300").await;
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(provider_config(dir.path(), &provider))
        .await
        .unwrap();
    let mut claims = provider_claims("nobody", Value::Null);
    claims.as_object_mut().unwrap().remove(ROLES_CLAIM);
    let token = sign(Algorithm::RS256, Some("rsa-2024"), &rsa1(), &claims);
    let (status, body) = get_flow(&hub, "f", &token).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    // Malformed roles claims: no role either, never a 401 or a 500.
    for bad in [
        json!("editor"),
        json!(["f"]),
        json!({"f": "superuser"}),
        json!({"f": 3}),
    ] {
        let token = sign(
            Algorithm::RS256,
            Some("rsa-2024"),
            &rsa1(),
            &provider_claims("nobody", bad.clone()),
        );
        let (status, body) = get_flow(&hub, "f", &token).await;
        assert_eq!(status, 403, "roles claim {bad}: {body}");
    }
    // The identity is valid: it may open a session (and gets no flow).
    let mut ws = RawClient::connect(&hub.ws_url(), &token).await;
    ws.send(&ClientMessage::SubscribeFlow {
        id: Some(1u64.into()),
        flow_id: "f".into(),
        pending: vec![],
        stream: false,
        format: Default::default(),
        since_heads: Vec::new(),
    })
    .await;
    let answer = ws
        .until(WAIT, |m| {
            matches!(
                m,
                ServerMessage::Error { .. } | ServerMessage::FlowState { .. }
            )
        })
        .await;
    assert!(
        matches!(
            answer,
            Some(ServerMessage::Error {
                code: ErrorCode::Forbidden,
                ..
            })
        ),
        "{answer:?}"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_key_rotation_needs_no_restart_and_unknown_kids_are_rate_limited() {
    let provider = Provider::start(&["rsa-1"], "max-age=3600").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = provider_config(dir.path(), &provider);
    cfg.jwks_min_refresh = Duration::from_millis(800);
    let hub = Hub::start(cfg).await.unwrap();
    let flows = json!({"f": "editor"});
    let old = sign(
        Algorithm::RS256,
        Some("rsa-2024"),
        &rsa1(),
        &provider_claims("u", flows.clone()),
    );
    assert_accepted(&hub, &old, "the first key").await;
    assert!(provider.fetches() >= 1);

    // The provider rotates: a new key with a new kid, the old one withdrawn.
    provider.serve_keys(&["rsa-2"]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let before = provider.fetches();
    let new = sign(
        Algorithm::RS256,
        Some("rsa-2025"),
        &rsa2(),
        &provider_claims("u", flows.clone()),
    );
    assert_accepted(&hub, &new, "the rotated key").await;
    assert_eq!(provider.fetches(), before + 1, "one fetch for the new kid");
    // The withdrawn key is gone with the refreshed set.
    assert_refused(&hub, &old, "unknown signing key").await;
    assert_eq!(
        provider.fetches(),
        before + 1,
        "no second fetch within the interval"
    );

    // Made-up kids cannot make the hub hammer the provider: one fetch per interval.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let before = provider.fetches();
    for i in 0..10 {
        let forged = sign(
            Algorithm::RS256,
            Some(&format!("made-up-{i}")),
            &rsa2(),
            &provider_claims("u", flows.clone()),
        );
        assert_refused(&hub, &forged, "unknown signing key").await;
    }
    assert_eq!(
        provider.fetches(),
        before + 1,
        "ten unknown kids, one fetch"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_is_fetched_again_when_its_max_age_expires() {
    let provider = Provider::start(&["rsa-1", "ed25519"], "public, max-age=2").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = provider_config(dir.path(), &provider);
    cfg.jwks_min_refresh = Duration::from_millis(100);
    let hub = Hub::start(cfg).await.unwrap();
    let flows = json!({"f": "editor"});
    let rsa_token = sign(
        Algorithm::RS256,
        Some("rsa-2024"),
        &rsa1(),
        &provider_claims("u", flows.clone()),
    );
    let ed_token = sign(
        Algorithm::EdDSA,
        Some("ed-2024"),
        &ed(),
        &provider_claims("u", flows),
    );
    assert_accepted(&hub, &rsa_token, "rsa").await;
    let fetched = provider.fetches();
    assert_accepted(&hub, &ed_token, "ed").await;
    assert_eq!(provider.fetches(), fetched, "cached within max-age");

    // The provider withdraws the Ed25519 key (same kids otherwise): once max-age has
    // passed the hub fetches again and stops accepting it, with no unknown-kid trigger
    // needed for the RSA token.
    provider.serve_keys(&["rsa-1"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_accepted(&hub, &rsa_token, "rsa after expiry").await;
    assert_eq!(
        provider.fetches(),
        fetched + 1,
        "fetched again after max-age"
    );
    assert_refused(&hub, &ed_token, "unknown signing key").await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_provider_the_generated_secret_is_not_a_way_in() {
    let provider = Provider::start(&["rsa-1"], "max-age=300").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = provider_config(dir.path(), &provider);
    cfg.jwt_secret = None;
    let hub = Hub::start(cfg).await.unwrap();
    // The secret the hub generated in its data directory (as `flowhub token` uses).
    let generated = std::fs::read_to_string(dir.path().join("jwt-secret")).unwrap();
    let hs256 = flowhub::auth::JwtKeys::new(generated.trim()).sign(&flowhub_protocol::Claims {
        sub: "local".into(),
        name: None,
        exp: now_secs() + 600,
        flows: [("f".to_string(), Role::Owner)].into(),
        svc: false,
    });
    assert_refused(&hub, &hs256, "unsupported token algorithm: HS256").await;
    let rs = sign(
        Algorithm::RS256,
        Some("rsa-2024"),
        &rsa1(),
        &provider_claims("u", json!({"f": "viewer"})),
    );
    assert_accepted(&hub, &rs, "the provider's token").await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_gives_401_not_a_hang_or_a_500() {
    // A port with nothing listening.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.jwks_url = Some(format!("http://127.0.0.1:{port}/jwks.json"));
    let hub = Hub::start(cfg).await.unwrap();
    let token = sign(
        Algorithm::RS256,
        Some("rsa-2024"),
        &rsa1(),
        &provider_claims("u", json!({"f": "editor"})),
    );
    let started = std::time::Instant::now();
    assert_refused(&hub, &token, "signing keys unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(8));
    hub.shutdown().await;
}
