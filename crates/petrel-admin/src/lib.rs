//! # petrel-admin
//!
//! The HTTP side of a Petrel broker, on one listener (`[http]` in the
//! configuration):
//!
//! * `/metrics`: Prometheus metrics ([`petrel_broker::Broker::metrics`]);
//! * `/api/v1/...`: a JSON admin API (clients, kick, sessions,
//!   subscriptions, retained messages, publish, stats, configuration);
//! * `/`: a web dashboard, its assets built into the binary;
//! * `/healthz` and `/readyz` for health checks.
//!
//! Requests carry `Authorization: Bearer TOKEN`, checked against the
//! SHA-256 in `token_hash` (constant time), or against a token made at
//! start and written to `http.token` in the data directory. `/healthz`
//! and `/readyz` need none; `/metrics` needs none with `public_metrics`;
//! nothing needs one with `allow_unauthenticated` (loopback only).
//!
//! ```no_run
//! # async fn run(broker: petrel_broker::Broker) -> Result<(), petrel_admin::AdminError> {
//! let http = petrel_broker::config::HttpConfig::default(); // 127.0.0.1:8080
//! let admin = petrel_admin::AdminServer::bind(broker, &http).await?;
//! tokio::spawn(admin.run()); // until the broker shuts down
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod metrics;

pub use metrics::{ExtraMetrics, Family};

/// What [`Membership`]'s changes answer, once done: the membership after,
/// or why it could not be changed.
pub type MembershipChange =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;

/// A cluster node's membership, for `/api/v1/cluster`: how the admin API
/// reaches the cluster layer without depending on it.
pub trait Membership: Send + Sync + std::fmt::Debug + 'static {
    /// The cluster as this node sees it (JSON): node, leader, voters,
    /// learners.
    fn status(&self) -> serde_json::Value;
    /// Add node `id`, whose node-to-node listener is `addr`.
    fn join(&self, id: u64, addr: String) -> MembershipChange;
    /// Take node `id` out.
    fn leave(&self, id: u64) -> MembershipChange;
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use petrel_broker::config::HttpConfig;
use petrel_broker::Broker;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The file in the data directory holding the token made at start.
pub const TOKEN_FILE: &str = "http.token";

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address can't be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No token is configured and there is nowhere to write one.
    #[error(
        "the HTTP API needs a token: set [http] token_hash (`petrel token` makes one), \
         or keep a data directory (the broker then writes one there), \
         or on a loopback address set allow_unauthenticated = true"
    )]
    NoToken,
    /// The token file can't be written.
    #[error("cannot write the HTTP token to {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A new random token: 32 bytes from the operating system's generator,
/// URL-safe base64.
pub fn new_token() -> std::io::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// `sha256:<hex>` of `token`, as `token_hash` takes it.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Who may use the listener.
#[derive(Debug)]
struct Access {
    /// The token's SHA-256 (none: no token needed).
    digest: Option<[u8; 32]>,
    public_metrics: bool,
}

impl Access {
    fn allows(&self, header: Option<&str>) -> bool {
        let Some(digest) = &self.digest else {
            return true;
        };
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let presented = Sha256::digest(token.trim().as_bytes());
        bool::from(presented.as_slice().ct_eq(digest))
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct App {
    broker: Broker,
    access: Access,
    extra: Option<Arc<dyn ExtraMetrics>>,
    /// The cluster this node is one of.
    membership: Option<Arc<dyn Membership>>,
    /// Numbers drains, so the clients of an old one stop being sent away.
    drains: std::sync::atomic::AtomicU64,
}

/// The HTTP listener, bound and ready to serve.
#[derive(Debug)]
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    token_file: Option<PathBuf>,
}

impl AdminServer {
    /// Bind `config.bind` for `broker`, and settle the token: the
    /// configured hash, or a new token written to the data directory.
    pub async fn bind(broker: Broker, config: &HttpConfig) -> Result<Self, AdminError> {
        let mut token_file = None;
        let digest = if config.allow_unauthenticated {
            None
        } else if let Some(d) = config.token_digest() {
            Some(d)
        } else {
            let dir = broker
                .config()
                .data_dir
                .clone()
                .ok_or(AdminError::NoToken)?;
            let path = dir.join(TOKEN_FILE);
            let digest: [u8; 32] = new_token()
                .and_then(|token| write_private(&path, &token).map(|()| token))
                .map(|token| Sha256::digest(token.as_bytes()).into())
                .map_err(|source| AdminError::TokenFile {
                    path: path.clone(),
                    source,
                })?;
            token_file = Some(path);
            Some(digest)
        };
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| AdminError::Bind {
                addr: config.bind,
                source,
            })?;
        Ok(Self {
            listener,
            app: Arc::new(App {
                broker,
                access: Access {
                    digest,
                    public_metrics: config.public_metrics,
                },
                extra: None,
                membership: None,
                drains: std::sync::atomic::AtomicU64::new(0),
            }),
            token_file,
        })
    }

    /// Show `extra`'s figures on `/metrics` too (a cluster node's).
    pub fn with_metrics(mut self, extra: Arc<dyn ExtraMetrics>) -> Self {
        if let Some(app) = Arc::get_mut(&mut self.app) {
            app.extra = Some(extra);
        }
        self
    }

    /// Serve `/api/v1/cluster` (a cluster node's membership: status,
    /// join, leave) through `membership`.
    pub fn with_membership(mut self, membership: Arc<dyn Membership>) -> Self {
        if let Some(app) = Arc::get_mut(&mut self.app) {
            app.membership = Some(membership);
        }
        self
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The file the token made at start was written to, if one was.
    pub fn token_file(&self) -> Option<&std::path::Path> {
        self.token_file.as_deref()
    }

    /// Serve until the broker shuts down.
    pub async fn run(self) {
        let addr = self.local_addr().ok();
        let broker = self.app.broker.clone();
        tracing::info!(
            addr = %addr.map_or_else(|| "-".into(), |a| a.to_string()),
            token = if self.app.access.digest.is_none() { "none needed" } else if self.token_file.is_some() { "in the data directory's http.token" } else { "token_hash" },
            "serving metrics, the admin API and the dashboard"
        );
        let mut shutdown = broker.shutdown_signal();
        let stop = async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        };
        let router = router(self.app);
        if let Err(e) = axum::serve(self.listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "the HTTP listener stopped");
        }
    }
}

/// Write `text` to `path`, readable and writable by this user only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // An older file may have had other permissions.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn router(app: Arc<App>) -> Router {
    let guarded = Router::new()
        .nest("/api/v1", api::routes())
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .merge(guarded)
        .fallback(not_found)
        .with_state(app)
}

async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let public = app.access.public_metrics && req.uri().path() == "/metrics";
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if public || app.access.allows(header) {
        return next.run(req).await;
    }
    let mut r = api::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send the API token as `Authorization: Bearer TOKEN`",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&app.broker, app.extra.as_ref()),
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.broker.is_ready() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "shutting down"})),
        )
            .into_response()
    }
}

async fn not_found() -> Response {
    api::error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("../assets/index.html"),
    )
}

async fn app_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    )
}

async fn style_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../assets/style.css"),
    )
}
