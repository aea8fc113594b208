//! The push-webhook receiver: Git servers call it on every push so the
//! reconciler fetches at once instead of at its next poll.
//!
//! `POST /hooks/git` (or `/hooks/git/<anything>`, so one receiver can be
//! named per repository on the sender's side) with a delivery from:
//!
//! | sender | event header | authentication |
//! |---|---|---|
//! | GitHub | `X-GitHub-Event: push` / `ping` | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` |
//! | Gitea, Forgejo | `X-Gitea-Event` / `X-Forgejo-Event` | `X-Gitea-Signature` / `X-Forgejo-Signature: <hex HMAC-SHA256>` |
//! | GitLab | `X-Gitlab-Event: Push Hook` | `X-Gitlab-Token: <secret>` |
//! | anything else | — | `Authorization: Bearer <secret>` or `X-Signature: sha256=<hex HMAC>` |
//!
//! A good push answers 202 and triggers a fetch, unless its JSON body's
//! `ref` names another branch (202, nothing fetched); `ping` answers 200; a
//! missing or bad signature or token 401; a body over 25 MiB 413. The
//! receiver never reads the repository itself: it only wakes the fetcher,
//! so a forged request could at most cause a fetch, and signatures keep
//! even that out.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use commitd_api::reflector::sleep_or_cancel;
use hmac::{Hmac, Mac};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, info, warn, Instrument};

/// The path deliveries are posted to (and below it).
pub const HOOK_PATH: &str = "/hooks/git";
/// The largest body accepted: GitHub caps its payloads at 25 MiB.
pub const MAX_BODY: usize = 25 * 1024 * 1024;
/// Connections served at once; more are closed at once (the port is open
/// to the Git server, so it must not be a way to exhaust the reconciler).
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to listen and which secret senders must prove they know.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// File holding the shared secret (trailing newline ignored), the one
    /// configured as the webhook's secret or token on the Git server.
    pub secret_file: PathBuf,
}

/// Why the receiver cannot start; the CLI can match on it.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading the webhook secret file {path}")]
    ReadSecret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook secret file {path} is empty")]
    EmptySecret { path: PathBuf },
    #[error("listening for webhooks on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The shared secret; `Debug` does not show it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from its bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// Reads a secret file; the trailing line break is not part of it.
    pub async fn from_file(path: &std::path::Path) -> Result<Secret, WebhookError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| WebhookError::ReadSecret {
                path: path.to_path_buf(),
                source,
            })?;
        let end = bytes
            .iter()
            .rposition(|b| !matches!(b, b'\n' | b'\r'))
            .map_or(0, |i| i + 1);
        if end == 0 {
            return Err(WebhookError::EmptySecret {
                path: path.to_path_buf(),
            });
        }
        Ok(Secret(bytes[..end].to_vec()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Who sent a delivery, told by its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    /// Gitea and Forgejo (and Gogs), which share their headers' shape.
    Gitea,
    GitLab,
    /// Any other sender, with a bearer token or an `X-Signature`.
    Generic,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::GitHub => "github",
            Provider::Gitea => "gitea",
            Provider::GitLab => "gitlab",
            Provider::Generic => "generic",
        })
    }
}

/// What a delivery announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Commits were pushed: fetch.
    Push,
    /// The sender checks the hook works: answer, fetch nothing.
    Ping,
    /// Any other event, named as the sender named it: ignored.
    Other(String),
}

/// A delivery whose signature or token is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub provider: Provider,
    pub event: Event,
}

/// Why a delivery is refused (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no signature or token")]
    Missing { provider: Provider },
    #[error("bad signature or token")]
    Bad { provider: Provider },
}

impl AuthError {
    /// The sender the headers named.
    pub fn provider(&self) -> Provider {
        match self {
            AuthError::Missing { provider } | AuthError::Bad { provider } => *provider,
        }
    }
}

/// Checks a delivery's signature or token against `secret` and says what
/// it announces. Comparisons take the same time whatever the input.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &Secret) -> Result<Delivery, AuthError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let hmac = |provider, signature: Option<&str>, prefixed: bool| {
        let Some(signature) = signature else {
            return Err(AuthError::Missing { provider });
        };
        let hex = if prefixed {
            signature
                .strip_prefix("sha256=")
                .ok_or(AuthError::Bad { provider })?
        } else {
            signature
        };
        if hmac_matches(&secret.0, body, hex.trim()) {
            Ok(())
        } else {
            Err(AuthError::Bad { provider })
        }
    };
    let token = |provider, given: Option<&str>| match given {
        None => Err(AuthError::Missing { provider }),
        Some(given) if same_secret(given.as_bytes(), &secret.0) => Ok(()),
        Some(_) => Err(AuthError::Bad { provider }),
    };
    if let Some(event) = header("x-gitea-event")
        .or_else(|| header("x-forgejo-event"))
        .or_else(|| header("x-gogs-event"))
    {
        let provider = Provider::Gitea;
        let signature = header("x-gitea-signature")
            .or_else(|| header("x-forgejo-signature"))
            .or_else(|| header("x-gogs-signature"));
        hmac(provider, signature, false)?;
        return Ok(Delivery {
            provider,
            event: named_event(event),
        });
    }
    if let Some(event) = header("x-gitlab-event") {
        let provider = Provider::GitLab;
        token(provider, header("x-gitlab-token"))?;
        let event = match event {
            "Push Hook" => Event::Push,
            other => Event::Other(other.to_string()),
        };
        return Ok(Delivery { provider, event });
    }
    if let Some(event) = header("x-github-event") {
        let provider = Provider::GitHub;
        hmac(provider, header("x-hub-signature-256"), true)?;
        return Ok(Delivery {
            provider,
            event: named_event(event),
        });
    }
    let provider = Provider::Generic;
    if let Some(auth) = header("authorization") {
        let given = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "));
        token(provider, Some(given.unwrap_or_default().trim()))?;
    } else {
        hmac(provider, header("x-signature"), true)?;
    }
    Ok(Delivery {
        provider,
        event: Event::Push,
    })
}

fn named_event(name: &str) -> Event {
    match name {
        "push" => Event::Push,
        "ping" => Event::Ping,
        other => Event::Other(other.to_string()),
    }
}

/// Whether `hex` is the HMAC-SHA256 of `body` under `secret`.
fn hmac_matches(secret: &[u8], body: &[u8], hex: &str) -> bool {
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

/// Compares two secrets in constant time, length included (the digests
/// have the same length whatever the inputs').
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    let diff = da
        .iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The branch a push names, as a full ref (`refs/heads/…`), if its JSON
/// body has a `ref`.
pub fn pushed_ref(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let name = value.get("ref")?.as_str()?;
    Some(if name.starts_with("refs/") {
        name.to_string()
    } else {
        format!("refs/heads/{name}")
    })
}

/// What a good push acts on.
#[derive(Debug, Clone)]
pub struct PushTarget {
    /// The full ref followed (`None` while not known: every push fetches).
    pub followed: watch::Receiver<Option<String>>,
    /// Where a push to it is announced (a full channel means a fetch is
    /// already pending, which will see this push too).
    pub trigger: mpsc::Sender<()>,
}

/// The receiver, bound but not yet serving: binding first makes a taken
/// port an error of the caller's, and lets it learn port 0's number.
pub struct WebhookServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    secret: Secret,
}

impl WebhookServer {
    /// Reads the secret file and binds the address.
    pub async fn bind(config: &WebhookConfig) -> Result<WebhookServer, WebhookError> {
        let secret = Secret::from_file(&config.secret_file).await?;
        WebhookServer::bind_with_secret(config.addr, secret).await
    }

    /// Binds `addr` for deliveries signed with `secret`.
    pub async fn bind_with_secret(
        addr: SocketAddr,
        secret: Secret,
    ) -> Result<WebhookServer, WebhookError> {
        let bind_error = |source| WebhookError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(WebhookServer {
            listener,
            local_addr,
            secret,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires.
    pub async fn serve(self, target: PushTarget, cancel: CancellationToken) {
        let shared = Arc::new((self.secret, target));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if connections.len() >= MAX_CONNECTIONS {
                            warn!(%peer, "too many webhook connections; closing this one");
                            continue;
                        }
                        connections.spawn(
                            serve_connection(stream, peer, shared.clone(), cancel.clone())
                                .instrument(debug_span!("webhook_connection", %peer)),
                        );
                    }
                    Err(e) => {
                        // Out of file descriptors, usually: wait for some.
                        warn!(error = %e, "accepting a webhook connection failed");
                        if sleep_or_cancel(Duration::from_millis(200), &cancel).await {
                            break;
                        }
                    }
                }
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<(Secret, PushTarget)>,
    cancel: CancellationToken,
) {
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(request, peer, &shared.0, &shared.1).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                debug!(error = %e, "webhook connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {}
    }
}

/// Answers one request.
async fn respond(
    request: Request<Incoming>,
    peer: SocketAddr,
    secret: &Secret,
    target: &PushTarget,
) -> Response<String> {
    let path = request.uri().path();
    let ours = path == HOOK_PATH
        || path
            .strip_prefix(HOOK_PATH)
            .is_some_and(|rest| rest.starts_with('/'));
    if !ours {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    if request.method() != Method::POST {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, read_body(body, MAX_BODY)).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Read(e))) => {
            debug!(%peer, error = %e, "reading a webhook body failed");
            return text(
                StatusCode::BAD_REQUEST,
                "400 bad request: unreadable body\n",
            );
        }
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "408 request timeout\n"),
    };
    let delivery = match verify(&parts.headers, &body, secret) {
        Ok(d) => d,
        Err(e) => {
            warn!(%peer, provider = %e.provider(), reason = %e, "refused a webhook delivery");
            return text(
                StatusCode::UNAUTHORIZED,
                &format!("401 unauthorized: {e}\n"),
            );
        }
    };
    let provider = delivery.provider;
    match delivery.event {
        Event::Ping => {
            info!(%peer, %provider, "webhook ping");
            text(StatusCode::OK, "pong\n")
        }
        Event::Other(event) => {
            debug!(%peer, %provider, event, "ignored a webhook event that is not a push");
            text(StatusCode::OK, "ignored: not a push event\n")
        }
        Event::Push => {
            let pushed = pushed_ref(&body);
            let followed = target.followed.borrow().clone();
            if let (Some(pushed), Some(followed)) = (&pushed, &followed) {
                if pushed != followed {
                    debug!(%peer, %provider, pushed, followed, "push to another branch; not fetching");
                    return text(StatusCode::ACCEPTED, "accepted: not the followed branch\n");
                }
            }
            info!(%peer, %provider, pushed = pushed.as_deref().unwrap_or("?"), "push webhook; fetching");
            // Full: a fetch is pending already and will see this push.
            let _ = target.trigger.try_send(());
            text(StatusCode::ACCEPTED, "accepted: fetching\n")
        }
    }
}

enum BodyError {
    TooLarge,
    Read(hyper::Error),
}

/// Reads a body of at most `limit` bytes.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut buf = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

fn too_large() -> Response<String> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        "413 payload too large: at most 25 MiB\n",
    )
}

fn text(status: StatusCode, body: &str) -> Response<String> {
    let mut response = Response::new(body.to_string());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = br#"{"ref":"refs/heads/main","after":"abc"}"#;

    fn secret() -> Secret {
        Secret::new(SECRET)
    }

    /// The hex HMAC-SHA256 of `body` under `key`, computed apart from the
    /// code under test (on top of `hmac`, checked against a known vector).
    fn sign(key: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        h
    }

    #[test]
    fn the_signing_helper_matches_a_known_vector() {
        // The widely published HMAC-SHA256 example.
        assert_eq!(
            sign(b"key", b"The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        // GitHub's documented example of X-Hub-Signature-256.
        assert_eq!(
            sign(SECRET, b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn github() {
        let good = format!("sha256={}", sign(SECRET, BODY));
        let h = headers(&[
            ("x-github-event", "push".into()),
            ("x-hub-signature-256", good),
        ]);
        assert_eq!(
            verify(&h, BODY, &secret()),
            Ok(Delivery {
                provider: Provider::GitHub,
                event: Event::Push
            })
        );
        let ping = format!("sha256={}", sign(SECRET, b"{}"));
        let h = headers(&[
            ("x-github-event", "ping".into()),
            ("x-hub-signature-256", ping),
        ]);
        assert_eq!(
            verify(&h, b"{}", &secret()).map(|d| d.event),
            Ok(Event::Ping)
        );
        let bad = format!("sha256={}", sign(b"wrong secret", BODY));
        let h = headers(&[
            ("x-github-event", "push".into()),
            ("x-hub-signature-256", bad),
        ]);
        assert_eq!(
            verify(&h, BODY, &secret()),
            Err(AuthError::Bad {
                provider: Provider::GitHub
            })
        );
        // The right signature of another body.
        let other = format!("sha256={}", sign(SECRET, b"other"));
        let h = headers(&[
            ("x-github-event", "push".into()),
            ("x-hub-signature-256", other),
        ]);
        assert!(verify(&h, BODY, &secret()).is_err());
        // Without the prefix, or not hex.
        let h = headers(&[
            ("x-github-event", "push".into()),
            ("x-hub-signature-256", sign(SECRET, BODY)),
        ]);
        assert!(verify(&h, BODY, &secret()).is_err());
        let h = headers(&[
            ("x-github-event", "push".into()),
            ("x-hub-signature-256", "sha256=zz".into()),
        ]);
        assert!(verify(&h, BODY, &secret()).is_err());
        let h = headers(&[("x-github-event", "push".into())]);
        assert_eq!(
            verify(&h, BODY, &secret()),
            Err(AuthError::Missing {
                provider: Provider::GitHub
            })
        );
    }

    #[test]
    fn gitea_and_forgejo() {
        for (event, signature) in [
            ("x-gitea-event", "x-gitea-signature"),
            ("x-forgejo-event", "x-forgejo-signature"),
        ] {
            let h = headers(&[(event, "push".into()), (signature, sign(SECRET, BODY))]);
            assert_eq!(
                verify(&h, BODY, &secret()),
                Ok(Delivery {
                    provider: Provider::Gitea,
                    event: Event::Push
                })
            );
            let h = headers(&[(event, "push".into()), (signature, sign(b"nope", BODY))]);
            assert_eq!(
                verify(&h, BODY, &secret()),
                Err(AuthError::Bad {
                    provider: Provider::Gitea
                })
            );
            let h = headers(&[(event, "push".into())]);
            assert_eq!(
                verify(&h, BODY, &secret()),
                Err(AuthError::Missing {
                    provider: Provider::Gitea
                })
            );
        }
        // Gitea also sends GitHub's headers; its own win.
        let h = headers(&[
            ("x-gitea-event", "push".into()),
            ("x-github-event", "push".into()),
            ("x-gitea-signature", sign(SECRET, BODY)),
        ]);
        assert_eq!(
            verify(&h, BODY, &secret()).map(|d| d.provider),
            Ok(Provider::Gitea)
        );
    }

    #[test]
    fn gitlab() {
        let secret_text = String::from_utf8(SECRET.to_vec()).expect("utf-8");
        let h = headers(&[
            ("x-gitlab-event", "Push Hook".into()),
            ("x-gitlab-token", secret_text),
        ]);
        assert_eq!(
            verify(&h, BODY, &secret()),
            Ok(Delivery {
                provider: Provider::GitLab,
                event: Event::Push
            })
        );
        let h = headers(&[
            ("x-gitlab-event", "Push Hook".into()),
            ("x-gitlab-token", "It's a Secret to Everybod".into()),
        ]);
        assert_eq!(
            verify(&h, BODY, &secret()),
            Err(AuthError::Bad {
                provider: Provider::GitLab
            })
        );
        let h = headers(&[("x-gitlab-event", "Push Hook".into())]);
        assert_eq!(
            verify(&h, BODY, &secret()),
            Err(AuthError::Missing {
                provider: Provider::GitLab
            })
        );
    }

    #[test]
    fn generic() {
        let secret_text = String::from_utf8(SECRET.to_vec()).expect("utf-8");
        let push = Ok(Delivery {
            provider: Provider::Generic,
            event: Event::Push,
        });
        let h = headers(&[("authorization", format!("Bearer {secret_text}"))]);
        assert_eq!(verify(&h, BODY, &secret()), push);
        let h = headers(&[("x-signature", format!("sha256={}", sign(SECRET, BODY)))]);
        assert_eq!(verify(&h, BODY, &secret()), push);
        let bad = Err(AuthError::Bad {
            provider: Provider::Generic,
        });
        let h = headers(&[("authorization", "Bearer guess".into())]);
        assert_eq!(verify(&h, BODY, &secret()), bad);
        let h = headers(&[("authorization", format!("Basic {secret_text}"))]);
        assert_eq!(verify(&h, BODY, &secret()), bad);
        let h = headers(&[("x-signature", format!("sha256={}", sign(b"x", BODY)))]);
        assert_eq!(verify(&h, BODY, &secret()), bad);
        assert_eq!(
            verify(&HeaderMap::new(), BODY, &secret()),
            Err(AuthError::Missing {
                provider: Provider::Generic
            })
        );
    }

    #[test]
    fn pushed_refs_are_full_names() {
        assert_eq!(pushed_ref(BODY).as_deref(), Some("refs/heads/main"));
        assert_eq!(
            pushed_ref(br#"{"ref":"dev"}"#).as_deref(),
            Some("refs/heads/dev")
        );
        assert_eq!(pushed_ref(b"not json"), None);
        assert_eq!(pushed_ref(b"{}"), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }

    /// A receiver on a loopback port following `refs/heads/main`.
    async fn serve() -> (SocketAddr, mpsc::Receiver<()>, CancellationToken) {
        let server =
            WebhookServer::bind_with_secret(SocketAddr::from(([127, 0, 0, 1], 0)), secret())
                .await
                .expect("bind");
        let addr = server.local_addr();
        let (trigger, triggered) = mpsc::channel(1);
        let (_tx, followed) = watch::channel(Some("refs/heads/main".to_string()));
        let cancel = CancellationToken::new();
        tokio::spawn(server.serve(PushTarget { followed, trigger }, cancel.clone()));
        (addr, triggered, cancel)
    }

    /// Sends a raw HTTP/1.1 request; returns the status and body.
    async fn send(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        // The server may answer (413) before reading all of a big body.
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn post(path: &str, extra: &str, body: &[u8]) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        )
    }

    #[tokio::test]
    async fn routes_and_answers() {
        let (addr, mut triggered, cancel) = serve().await;
        let github = |body: &[u8]| {
            format!(
                "X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={}\r\n",
                sign(SECRET, body)
            )
        };
        // A push to the followed branch: 202 and a trigger.
        let (status, _) = send(addr, &post("/hooks/git", &github(BODY), BODY), BODY).await;
        assert_eq!(status, 202);
        tokio::time::timeout(Duration::from_secs(1), triggered.recv())
            .await
            .expect("triggered within a second");
        // Below the path too.
        let (status, _) = send(addr, &post("/hooks/git/prod", &github(BODY), BODY), BODY).await;
        assert_eq!(status, 202);
        tokio::time::timeout(Duration::from_secs(1), triggered.recv())
            .await
            .expect("triggered within a second");
        // Another branch: 202, no trigger.
        let dev = br#"{"ref":"refs/heads/dev"}"#;
        let (status, body) = send(addr, &post("/hooks/git", &github(dev), dev), dev).await;
        assert_eq!(
            (status, body.as_str()),
            (202, "accepted: not the followed branch\n")
        );
        // Ping: 200, no trigger.
        let ping = format!(
            "X-GitHub-Event: ping\r\nX-Hub-Signature-256: sha256={}\r\n",
            sign(SECRET, b"{}")
        );
        let (status, _) = send(addr, &post("/hooks/git", &ping, b"{}"), b"{}").await;
        assert_eq!(status, 200);
        // A bad signature: 401 with one line.
        let bad = "X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\n";
        let (status, body) = send(addr, &post("/hooks/git", bad, BODY), BODY).await;
        assert_eq!(status, 401);
        assert_eq!(body.lines().count(), 1, "{body:?}");
        // Unknown paths, wrong methods, big bodies.
        let (status, _) = send(addr, &post("/hooks/gitx", &github(BODY), BODY), BODY).await;
        assert_eq!(status, 404);
        let (status, _) = send(addr, "GET /hooks/git HTTP/1.1\r\nHost: t\r\n\r\n", b"").await;
        assert_eq!(status, 405);
        let big = format!(
            "POST /hooks/git HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let (status, _) = send(addr, &big, b"").await;
        assert_eq!(status, 413);
        // A chunked body with no length, over the limit as it streams.
        let chunk = vec![b'a'; 1024 * 1024];
        let mut chunked = Vec::new();
        for _ in 0..26 {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(&chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let head = format!(
            "POST /hooks/git HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{}\r\n",
            github(b"")
        );
        let (status, _) = send(addr, &head, &chunked).await;
        assert_eq!(status, 413);
        assert!(
            triggered.try_recv().is_err(),
            "nothing else triggered a fetch"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn secret_files_lose_their_line_break() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").expect("write");
        let s = Secret::from_file(&path).await.expect("read");
        assert_eq!(s.0, b"s3cret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            Secret::from_file(&path).await,
            Err(WebhookError::EmptySecret { .. })
        ));
    }
}
