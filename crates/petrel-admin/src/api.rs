//! `/api/v1`: the admin API, JSON in and out. Every failure is a JSON
//! `{"error": {"code", "message"}}` with its status; nothing a request
//! carries can panic a handler.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use petrel_broker::{ClientSummary, Discard, Drain, SubscriptionSummary};
use petrel_codec::{QoS, TopicFilter, TopicName};
use serde::Deserialize;
use serde_json::{json, Value};

use super::App;

type Shared = State<Arc<App>>;

/// How long deleting a connected session waits for its connection to let
/// go after the kick.
const DISCARD_WAIT: Duration = Duration::from_secs(5);

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/stats", get(stats))
        .route("/clients", get(clients))
        .route("/clients/{client_id}", get(client).delete(kick))
        .route("/sessions", get(sessions))
        .route("/sessions/{client_id}", axum::routing::delete(discard))
        .route("/subscriptions", get(subscriptions))
        .route("/retained", get(retained))
        .route(
            "/retained/{*topic}",
            get(retained_one).delete(delete_retained),
        )
        .route("/publish", post(publish))
        .route("/config", get(config))
        .route("/drain", get(drained).post(drain).delete(undrain))
        .route("/cluster", get(cluster))
        .route("/cluster/nodes", post(join))
        .route("/cluster/nodes/{id}", axum::routing::delete(leave))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
}

/// A JSON error.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: impl Into<String>) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", message)
}

/// Paging and filters of a list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    page: Option<usize>,
    limit: Option<usize>,
    client_id: Option<String>,
    username: Option<String>,
    address: Option<String>,
    protocol: Option<String>,
    filter: Option<String>,
    connected: Option<bool>,
}

const MAX_LIMIT: usize = 1000;

impl ListQuery {
    fn from(q: Result<Query<Self>, QueryRejection>) -> Result<Self, Response> {
        let q = q.map_err(|e| bad_request(e.body_text()))?.0;
        if q.page == Some(0) {
            return Err(bad_request("page counts from 1"));
        }
        if q.limit.is_some_and(|l| l == 0 || l > MAX_LIMIT) {
            return Err(bad_request(format!("limit must be 1 to {MAX_LIMIT}")));
        }
        Ok(q)
    }

    /// One page of `items`, with the total.
    fn page(&self, items: Vec<Value>) -> Response {
        let page = self.page.unwrap_or(1);
        let limit = self.limit.unwrap_or(100);
        let count = items.len();
        let data: Vec<Value> = items
            .into_iter()
            .skip((page - 1).saturating_mul(limit))
            .take(limit)
            .collect();
        Json(json!({
            "data": data,
            "meta": {"page": page, "limit": limit, "count": count},
        }))
        .into_response()
    }
}

fn contains(field: Option<&str>, wanted: &Option<String>) -> bool {
    match wanted {
        None => true,
        Some(w) => field.is_some_and(|f| f.contains(w.as_str())),
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn client_json(c: &ClientSummary) -> Value {
    json!({
        "client_id": c.client_id,
        "username": c.username,
        "address": c.address.map(|a| a.to_string()),
        "listener": c.listener,
        "protocol": c.protocol.version(),
        "connected_at": unix_seconds(c.connected_at),
        "keep_alive": c.keep_alive,
        "clean_start": c.clean_start,
        "session_expiry": c.session_expiry,
        "queue_depth": c.queue_depth,
        "queue_bytes": c.queue_bytes,
        "inflight": c.inflight,
        "subscriptions": c.subscriptions,
    })
}

fn subscription_json(s: &SubscriptionSummary) -> Value {
    let o = &s.subscription.options;
    json!({
        "client_id": s.client_id,
        "filter": s.filter,
        "qos": o.qos as u8,
        "no_local": o.no_local,
        "retain_as_published": o.retain_as_published,
        "retain_handling": o.retain_handling as u8,
        "identifier": s.subscription.identifier.map(|i| i.get()),
    })
}

/// A payload as text if it is UTF-8, else base64.
fn payload_json(payload: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::String(text.to_string()), "utf8"),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
            "base64",
        ),
    }
}

fn message_json(m: &petrel_session::Message) -> Value {
    let (payload, encoding) = payload_json(&m.payload);
    json!({
        "topic": m.topic.as_str(),
        "qos": m.qos as u8,
        "size": m.payload.len(),
        "payload": payload,
        "payload_encoding": encoding,
        "message_expiry_interval": m.properties.message_expiry_interval(),
        "content_type": m.properties.content_type().map(|c| c.as_str().to_string()),
    })
}

async fn stats(State(app): Shared) -> Response {
    let m = app.broker.metrics();
    let s = &m.stats;
    Json(json!({
        "clients_connected": s.clients_connected,
        "clients_maximum": s.clients_maximum,
        "connections_total": s.connections_total,
        "sessions": s.sessions,
        "messages_received": s.messages_received,
        "messages_sent": s.messages_sent,
        "publish_received": s.publish_received,
        "publish_sent": s.publish_sent,
        "publish_received_by_qos": s.publish_received_by_qos,
        "publish_sent_by_qos": s.publish_sent_by_qos,
        "bytes_received": s.bytes_received,
        "bytes_sent": s.bytes_sent,
        "subscriptions": s.subscriptions,
        "subscription_bytes": s.subscription_bytes,
        "retained": s.retained,
        "retained_bytes": m.retained_bytes,
        "queued_messages": m.queued_messages,
        "queued_bytes": m.queued_bytes,
        "inflight": m.inflight,
        "dropped_qos0": s.dropped_qos0,
        "dropped_queue_full": s.dropped_queue_full,
        "dropped_expired": s.dropped_expired,
        "dropped_too_large": s.dropped_too_large,
        "connections_refused": s.connections_refused,
        "hibernations": s.hibernations,
        "hibernating": s.hibernating,
        "auth_failures": s.auth_failures,
        "auth_successes": s.auth_successes,
        "denied_publish": s.denied_publish,
        "denied_subscribe": s.denied_subscribe,
        "denied_delivery": s.denied_delivery,
        "store_errors": s.store_errors,
        "store_full": s.store_full,
        "sessions_evicted": s.sessions_evicted,
        "connections_throttled": s.connections_throttled,
        "uptime_seconds": m.uptime.as_secs(),
    }))
    .into_response()
}

async fn clients(State(app): Shared, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let q = match ListQuery::from(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if let Some(p) = &q.protocol {
        if !matches!(p.as_str(), "3.1" | "3.1.1" | "5.0") {
            return bad_request("protocol must be 3.1, 3.1.1 or 5.0");
        }
    }
    let mut list = app.broker.clients();
    list.retain(|c| {
        contains(Some(&c.client_id), &q.client_id)
            && contains(c.username.as_deref(), &q.username)
            && contains(c.address.map(|a| a.to_string()).as_deref(), &q.address)
            && q.protocol
                .as_deref()
                .is_none_or(|p| p == c.protocol.version())
    });
    list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    q.page(list.iter().map(client_json).collect())
}

async fn client(State(app): Shared, Path(client_id): Path<String>) -> Response {
    match app.broker.client(&client_id) {
        Some((c, subs)) => {
            let mut v = client_json(&c);
            v["subscription_list"] = subs.iter().map(subscription_json).collect();
            Json(v).into_response()
        }
        None => not_found(format!("no connected client `{client_id}`")),
    }
}

async fn kick(State(app): Shared, Path(client_id): Path<String>) -> Response {
    if app.broker.kick(&client_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found(format!("no connected client `{client_id}`"))
    }
}

async fn sessions(State(app): Shared, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let q = match ListQuery::from(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let mut list = app.broker.sessions();
    list.retain(|s| {
        contains(Some(&s.client_id), &q.client_id) && q.connected.is_none_or(|c| c == s.connected)
    });
    list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    q.page(
        list.iter()
            .map(|s| {
                json!({
                    "client_id": s.client_id,
                    "connected": s.connected,
                    "expiry_interval": s.expiry,
                    "expires_in": s.expires_in.map(|d| d.as_secs()),
                    "queue_depth": s.queue_depth,
                    "queue_bytes": s.queue_bytes,
                    "subscriptions": s.subscriptions,
                })
            })
            .collect(),
    )
}

/// End a session; a connected one's client is kicked first.
async fn discard(State(app): Shared, Path(client_id): Path<String>) -> Response {
    let deadline = tokio::time::Instant::now() + DISCARD_WAIT;
    let mut kicked = false;
    loop {
        match app.broker.discard_session(&client_id) {
            Discard::Discarded => return StatusCode::NO_CONTENT.into_response(),
            Discard::NotFound if kicked => return StatusCode::NO_CONTENT.into_response(),
            Discard::NotFound => return not_found(format!("no session `{client_id}`")),
            Discard::Connected => {
                if !kicked {
                    app.broker.kick(&client_id);
                    kicked = true;
                }
                if tokio::time::Instant::now() >= deadline {
                    return error(
                        StatusCode::CONFLICT,
                        "conflict",
                        format!("`{client_id}` is still connected; try again"),
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn subscriptions(
    State(app): Shared,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = match ListQuery::from(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let mut list = app.broker.subscriptions();
    list.retain(|s| {
        contains(Some(&s.client_id), &q.client_id) && contains(Some(&s.filter), &q.filter)
    });
    list.sort_by(|a, b| (&a.client_id, &a.filter).cmp(&(&b.client_id, &b.filter)));
    q.page(list.iter().map(subscription_json).collect())
}

async fn retained(State(app): Shared, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let q = match ListQuery::from(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let text = q.filter.as_deref().unwrap_or("#");
    let filter = match TopicFilter::try_from(text.to_string()) {
        Ok(f) => f,
        Err(e) => return bad_request(format!("invalid topic filter `{text}`: {e}")),
    };
    let mut list = app.broker.retained(&filter);
    list.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    q.page(list.iter().map(message_json).collect())
}

fn topic_of(text: &str) -> Result<TopicName, Response> {
    TopicName::try_from(text.to_string())
        .map_err(|e| bad_request(format!("invalid topic `{text}`: {e}")))
}

async fn retained_one(State(app): Shared, Path(topic): Path<String>) -> Response {
    let name = match topic_of(&topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let filter = match TopicFilter::try_from(topic.clone()) {
        Ok(f) => f,
        Err(e) => return bad_request(format!("invalid topic `{topic}`: {e}")),
    };
    match app
        .broker
        .retained(&filter)
        .iter()
        .find(|m| m.topic == name)
    {
        Some(m) => Json(message_json(m)).into_response(),
        None => not_found(format!("no retained message on `{topic}`")),
    }
}

async fn delete_retained(State(app): Shared, Path(topic): Path<String>) -> Response {
    let name = match topic_of(&topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match app.broker.delete_retained(&name).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(format!("no retained message on `{topic}`")),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            e.to_string(),
        ),
    }
}

/// `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

async fn publish(
    State(app): Shared,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad_request(e.body_text()),
    };
    let topic = match topic_of(&req.topic) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if topic.as_str().starts_with('$') {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "topics beginning with $ are the broker's own",
        );
    }
    let Some(qos) = QoS::from_u8(req.qos) else {
        return bad_request("qos must be 0, 1 or 2");
    };
    let payload = match req.payload_encoding.as_deref().unwrap_or("utf8") {
        "utf8" => Bytes::from(req.payload.into_bytes()),
        "base64" => match base64::engine::general_purpose::STANDARD.decode(&req.payload) {
            Ok(b) => Bytes::from(b),
            Err(e) => return bad_request(format!("payload is not base64: {e}")),
        },
        other => {
            return bad_request(format!(
                "payload_encoding must be utf8 or base64, not `{other}`"
            ))
        }
    };
    let max = app.broker.config().limits.max_packet_size as usize;
    if payload.len() > max {
        return bad_request(format!("payload larger than max_packet_size ({max} bytes)"));
    }
    let delivered = app.broker.publish(topic, payload, qos, req.retain);
    Json(json!({"delivered": delivered})).into_response()
}

/// The configuration in force, secrets replaced.
async fn config(State(app): Shared) -> Response {
    let current = app.broker.current_config();
    let mut v = match serde_json::to_value(&*current) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    for (table, key) in [("jwt", "secret"), ("http", "token_hash")] {
        if let Some(slot) = v.get_mut(table).and_then(|t| t.get_mut(key)) {
            if !slot.is_null() {
                *slot = Value::String("<redacted>".into());
            }
        }
    }
    if let Some(bridges) = v.get_mut("bridge").and_then(Value::as_array_mut) {
        for b in bridges {
            if let Some(slot) = b.get_mut("password").filter(|p| !p.is_null()) {
                *slot = Value::String("<redacted>".into());
            }
        }
    }
    Json(v).into_response()
}

/// `POST /drain`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    /// Where 5.0 clients are sent (`host:port`, or several,
    /// space-separated).
    #[serde(default)]
    server_reference: Option<String>,
    /// How many connected clients are sent away a second (0 or absent:
    /// all at once). Spreads their reconnections over the other servers.
    #[serde(default)]
    per_second: u32,
}

/// The clients a drain sends away: those that came through a listener (a
/// bridge's local side stays).
fn listener_clients(broker: &petrel_broker::Broker) -> Vec<String> {
    broker
        .clients()
        .into_iter()
        .filter(|c| !c.listener.is_empty())
        .map(|c| c.client_id)
        .collect()
}

/// The drain, as `GET /drain` and `POST /drain` answer it.
fn drain_json(app: &App) -> Value {
    let d = app.broker.draining();
    let connected = listener_clients(&app.broker).len();
    json!({
        "draining": d.is_some(),
        "server_reference": d.and_then(|d| d.server_reference),
        "connected": connected,
    })
}

async fn drained(State(app): Shared) -> Response {
    Json(drain_json(&app)).into_response()
}

/// Drain the broker: new connections are refused (5.0 CONNACK 0x9C with
/// the Server Reference), and the connected clients are sent away (5.0
/// DISCONNECT 0x9C), `per_second` at a time if asked, until all have gone
/// or the drain is lifted.
async fn drain(State(app): Shared, body: Result<Json<DrainRequest>, JsonRejection>) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad_request(e.body_text()),
    };
    if let Some(r) = &req.server_reference {
        if r.is_empty() || petrel_codec::MqttString::try_from(r.as_str()).is_err() {
            return bad_request("server_reference must be a non-empty UTF-8 string without NUL");
        }
    }
    app.broker.drain(Drain {
        server_reference: req.server_reference,
    });
    // One sender at a time: a new drain (or an undrain) stops the last.
    let generation = app.drains.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let app2 = app.clone();
    tokio::spawn(send_away(app2, generation, req.per_second));
    (StatusCode::ACCEPTED, Json(drain_json(&app))).into_response()
}

/// Send the connected clients away, `per_second` a second (0: all at
/// once), looking again until none is left (one may have been let in
/// while the drain began), while drain `generation` lasts.
async fn send_away(app: Arc<App>, generation: u64, per_second: u32) {
    use std::sync::atomic::Ordering::SeqCst;
    // Ticks of at least 10 ms, with as many clients each as the rate asks.
    let tick = Duration::from_millis(10).max(Duration::from_secs(1) / per_second.max(1));
    let per_tick = if per_second == 0 {
        usize::MAX
    } else {
        ((u64::from(per_second) * tick.as_millis() as u64 / 1000).max(1)) as usize
    };
    let current = || app.drains.load(SeqCst) == generation && app.broker.draining().is_some();
    while current() {
        let clients = listener_clients(&app.broker);
        if clients.is_empty() {
            return;
        }
        for chunk in clients.chunks(per_tick.max(1)) {
            if !current() {
                return;
            }
            for id in chunk {
                app.broker.redirect(id);
            }
            tokio::time::sleep(tick).await;
        }
    }
}

async fn undrain(State(app): Shared) -> Response {
    app.drains.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    app.broker.undrain();
    Json(drain_json(&app)).into_response()
}

/// This node's cluster, if it is one's.
fn membership(app: &App) -> Result<Arc<dyn crate::Membership>, Response> {
    app.membership.clone().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "this broker is not a node of a cluster",
        )
    })
}

/// `GET /cluster`: the cluster as this node sees it.
async fn cluster(State(app): Shared) -> Response {
    match membership(&app) {
        Ok(m) => Json(m.status()).into_response(),
        Err(r) => r,
    }
}

/// `POST /cluster/nodes`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    /// The node's number.
    id: u64,
    /// Its node-to-node listener, `host:port`.
    addr: String,
}

/// The answer to a membership change.
fn changed(result: Result<String, String>) -> Response {
    match result {
        Ok(members) => Json(json!({ "members": members })).into_response(),
        Err(e) => error(StatusCode::CONFLICT, "not_changed", e),
    }
}

/// `POST /cluster/nodes`: add a node (answered once it is a member).
async fn join(State(app): Shared, body: Result<Json<JoinRequest>, JsonRejection>) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad_request(e.body_text()),
    };
    if req.id == 0 || req.addr.parse::<std::net::SocketAddr>().is_err() && !req.addr.contains(':') {
        return bad_request("id must be a node number (from 1) and addr host:port");
    }
    match membership(&app) {
        Ok(m) => changed(m.join(req.id, req.addr).await),
        Err(r) => r,
    }
}

/// `DELETE /cluster/nodes/{id}`: take a node out.
async fn leave(State(app): Shared, Path(id): Path<u64>) -> Response {
    match membership(&app) {
        Ok(m) => changed(m.leave(id).await),
        Err(r) => r,
    }
}
