//! Who owns each client's session. A CONNECT claims the session for its
//! node through the log ([`Command::Owners`](crate::types::Command)), in
//! order with the node's other ownership changes; the node that had the
//! session hears of it as it applies the claim, closes the client's
//! connection there (0x8E) and hands the session on ([`Request::Adopt`]);
//! the CONNECT waits for it, bounded, and then resumes it as a local one.
//!
//! The node that hands a session on keeps its form in its store until the
//! new owner has it in its own: a crash meanwhile sends it again after
//! the restart. A node that was down when its session was claimed still
//! has the session; once it is back and has caught up with the log, it
//! hands on every session it holds that another node owns, and the owner
//! merges it into the session the client has there (or, if that claim was
//! with Clean Start, the session ends).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use petrel_broker::{ClaimRefused, Exported};
use tokio::sync::{mpsc, oneshot};

use super::{Inner, Move, NodeId, Request, Response};
use crate::sync::{lock, read};
use crate::types::Claimed;

/// What a CONNECT waiting for its session hears from the node that had it.
#[derive(Debug)]
pub(super) enum Arrival {
    /// Here (or there was none).
    Here,
    /// It belongs to another user.
    NotYours,
}

/// How many hand-on ids a node remembers, to take a resent session once.
const REMEMBERED: usize = 4096;

/// How often a session the new owner could not read is sent again before
/// this node takes it back.
const READ_FAILURES: u32 = 5;

/// A CONNECT's place in `arrivals`, given up when the CONNECT is (its
/// connection gone) or done.
struct Waiting {
    inner: Arc<Inner>,
    client: String,
    token: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut a = lock(&self.inner.arrivals);
        if a.get(&self.client).is_some_and(|(t, _)| *t == self.token) {
            a.remove(&self.client);
        }
    }
}

/// Queue an ownership change nobody waits for (written with the next
/// batch).
pub(super) fn queue(inner: &Inner, client: String, claim: Option<Claimed>) {
    lock(&inner.changes).owners.push((client, claim));
    inner.wake.notify_one();
}

/// Make this node the owner of `client`'s session (see
/// [`petrel_broker::Peers::claim`]).
pub(super) async fn claim_session(
    inner: Arc<Inner>,
    client: String,
    claim: Claimed,
) -> Result<(), ClaimRefused> {
    let owner = {
        let c = lock(&inner.changes);
        let pending = c.in_flight.contains(&client) || c.owners.iter().any(|(x, _)| *x == client);
        let owner = read(&inner.routes).owner(&client);
        if !pending && owner == Some(inner.me) {
            // Already this node's: nothing to agree, with or without a
            // quorum (cut off from the majority, this node still lets its
            // own clients back in).
            return Ok(());
        }
        owner
    };
    if !inner.available() {
        if owner.is_some_and(|o| o != inner.me) {
            return Err(ClaimRefused::Unavailable(
                "this node reaches no majority of the cluster: the session can't be taken over from the node that has it"
                    .into(),
            ));
        }
        // Nobody has it (as far as this node knows): the client is let in,
        // and the claim written when the cluster answers (a node that had
        // the session after all hands it on then, merged into this one).
        queue(&inner, client, Some(claim));
        return Ok(());
    }
    let (arrived_tx, arrived) = oneshot::channel();
    let token = inner.next_arrival.fetch_add(1, Ordering::Relaxed);
    lock(&inner.arrivals).insert(client.clone(), (token, arrived_tx));
    let _waiting = Waiting {
        inner: inner.clone(),
        client: client.clone(),
        token,
    };
    let (tx, rx) = oneshot::channel();
    {
        let mut c = lock(&inner.changes);
        let i = c.owners.len();
        c.owners.push((client.clone(), Some(claim)));
        c.claims.push((i, tx));
    }
    inner.wake.notify_one();
    let previous = rx
        .await
        .unwrap_or_else(|_| Err("the cluster node stopped".into()))
        .map_err(ClaimRefused::Unavailable)?;
    match previous {
        Some(p) if p != inner.me => {
            let wait = Duration::from_secs(inner.config.forward_timeout);
            match tokio::time::timeout(wait, arrived).await {
                Ok(Ok(Arrival::NotYours)) => return Err(ClaimRefused::NotYours),
                Ok(_) => {}
                Err(_) => tracing::warn!(
                    client,
                    node = p,
                    "the node that had this session did not hand it on in time: it comes when that node is back"
                ),
            }
        }
        _ => {}
    }
    Ok(())
}

/// Node `from` hands on `client`'s session: bring it in (answered once it
/// is in this node's store), then let the CONNECT that waits for it go on
/// (once its subscriptions are routed here).
pub(super) async fn adopt(
    inner: &Arc<Inner>,
    from: NodeId,
    client: String,
    session: Option<Vec<u8>>,
    id: u64,
    not_yours: bool,
) -> Response {
    let Some(broker) = inner.broker.get() else {
        return Response::Failed("not started".into());
    };
    let seen = {
        let mut a = lock(&inner.adopted);
        let seen = a.contains(&id);
        if !seen {
            a.push_back(id);
            if a.len() > REMEMBERED {
                a.pop_front();
            }
        }
        seen
    };
    let mut routed = None;
    if let (Some(bytes), false) = (session, seen) {
        match broker.import_session(&bytes) {
            Ok(imported) => {
                let stored = imported.stored;
                if let Err(e) = futures::future::poll_fn(|cx| stored.poll(cx)).await {
                    lock(&inner.adopted).retain(|x| *x != id);
                    return Response::Failed(e.to_string());
                }
                tracing::info!(client, from, "session taken over from another node");
                routed = Some(imported.routed);
            }
            Err(e) => {
                lock(&inner.adopted).retain(|x| *x != id);
                tracing::warn!(client, from, error = %e, "a session from another node could not be read: refused");
                return Response::Failed(e.to_string());
            }
        }
    }
    let answer = super::flushed(inner);
    let inner = inner.clone();
    tokio::spawn(async move {
        if let Some(routed) = routed {
            let wait = Duration::from_secs(inner.config.route_timeout);
            let _ =
                tokio::time::timeout(wait, futures::future::poll_fn(|cx| routed.poll(cx))).await;
        }
        let waiting = lock(&inner.arrivals).remove(&client);
        if let Some((_, tx)) = waiting {
            let _ = tx.send(if not_yours {
                Arrival::NotYours
            } else {
                Arrival::Here
            });
        }
    });
    answer
}

/// Hand on the sessions other nodes take from this one, as the claims are
/// applied. Claims applied before this node caught up with the log (a
/// restart replays old ones) are left to [`hand_on_held`], which looks at
/// the owners as they are once it has.
pub(super) async fn hand_on(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Move>) {
    while let Some(m) = rx.recv().await {
        let caught_up = inner.caught_up.load(Ordering::Acquire);
        if caught_up != 0 && m.index > caught_up {
            tokio::spawn(move_session(inner.clone(), m, None));
        }
    }
}

/// Once this node has applied its first Reset (at `index`): send again
/// the sessions whose hand-on a crash interrupted, and hand on every
/// session this node holds that another node owns.
pub(super) async fn hand_on_held(inner: Arc<Inner>, index: u64) {
    let Some(broker) = inner.broker.get() else {
        return;
    };
    if let Some(raft) = inner.raft.get() {
        // Its own apply, however long the catching up takes.
        let _ = raft
            .wait(None)
            .applied_index_at_least(Some(index), "caught up")
            .await;
    }
    if inner
        .caught_up
        .compare_exchange(0, index, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    let moving = broker.moving_sessions().unwrap_or_else(|e| {
        tracing::error!(error = %e, "sessions being handed on can't be read");
        Vec::new()
    });
    // Read before the routes' lock: the broker's lock comes first.
    let held = broker.session_ids();
    let mut moves = Vec::new();
    {
        let routes = read(&inner.routes);
        for (client, form) in moving {
            let (to, claim) = routes.owner_claim(&client).unwrap_or_default();
            if claim.clean && to != inner.me {
                // Claimed with Clean Start while this node was away: the
                // session it was handing on ends.
                broker.forget_moved(&client);
                continue;
            }
            let m = Move {
                client,
                to,
                claim,
                index: 0,
            };
            moves.push((m, Some(form)));
        }
        for client in held {
            if let Some((to, claim)) = routes.owner_claim(&client) {
                if to != inner.me {
                    let m = Move {
                        client,
                        to,
                        claim,
                        index: 0,
                    };
                    moves.push((m, None));
                }
            }
        }
    }
    if !moves.is_empty() {
        tracing::info!(
            sessions = moves.len(),
            "handing on sessions other nodes took over while this one was away"
        );
    }
    for (m, form) in moves {
        tokio::spawn(move_session(inner.clone(), m, form));
    }
}

/// Removes a client from `moving` when its hand-on ends.
struct Moving<'a>(&'a Inner, String);

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        lock(&self.0.moving).remove(&self.1);
    }
}

/// Take `m`'s session out of this node (or send again the `form` a crash
/// left in the store) and hand it to its owner, until the owner has it.
/// If the session changed owner meanwhile it goes to the new one (or ends,
/// if that one claimed it with Clean Start); if it came back here, its
/// owner let it go, or the owner can't read it, it is taken back here.
async fn move_session(inner: Arc<Inner>, mut m: Move, form: Option<Vec<u8>>) {
    let Some(broker) = inner.broker.get() else {
        return;
    };
    if !lock(&inner.moving).insert(m.client.clone()) {
        return;
    }
    let _moving = Moving(&inner, m.client.clone());
    let session = match form {
        Some(f) => f,
        None => {
            // Claimed again since? Then to its owner now, as that claim
            // says (this node has the session: nobody else hands it on).
            match read(&inner.routes).owner_claim(&m.client) {
                Some((to, _)) if to == inner.me => return,
                Some((to, claim)) => {
                    m.to = to;
                    m.claim = claim;
                }
                None => {
                    // Let go by the node that claimed it: this node keeps
                    // it, and owns it.
                    queue(&inner, m.client.clone(), Some(Claimed::default()));
                    return;
                }
            }
            let user = m.claim.user.as_deref();
            match broker.export_session(&m.client, m.claim.clean, user).await {
                Exported::Session(f) => f,
                Exported::Nothing => {
                    // Nothing to hand on: the CONNECT waiting there need
                    // not wait.
                    send_once(&inner, &m, false).await;
                    return;
                }
                Exported::NotYours => {
                    // Not taken: the CONNECT there is refused, and the
                    // session is this node's again.
                    tracing::warn!(
                        client = m.client,
                        node = m.to,
                        "a client id was claimed by another user: its session stays"
                    );
                    send_once(&inner, &m, true).await;
                    queue(&inner, m.client.clone(), Some(Claimed::default()));
                    return;
                }
            }
        }
    };
    let id = rand_id();
    let wait = Duration::from_secs(inner.config.forward_timeout);
    let mut pause = Duration::from_millis(200);
    let (mut failures, mut tries) = (0u32, 0u64);
    loop {
        let answer = match inner.link(m.to) {
            Some(link) => {
                let request = Request::Adopt {
                    client: m.client.clone(),
                    session: Some(session.clone()),
                    id,
                    not_yours: false,
                };
                link.call(request, wait).await
            }
            None => Err(std::io::Error::other(format!("node {} is no member", m.to))),
        };
        match answer {
            Ok(Response::Done) => {
                broker.forget_moved(&m.client);
                return;
            }
            Ok(Response::Failed(e)) => {
                failures += 1;
                tracing::warn!(client = m.client, node = m.to, error = %e, "the new owner could not take a session");
            }
            Ok(_) => failures += 1,
            Err(e) => {
                if tries % 60 == 0 {
                    tracing::warn!(client = m.client, node = m.to, error = %e, "a session can't be handed on yet: sent again until it is");
                }
            }
        }
        tries += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        let owner = read(&inner.routes).owner_claim(&m.client);
        match owner {
            Some((n, claim)) if n != inner.me && failures < READ_FAILURES => {
                if claim.clean {
                    // Taken with Clean Start meanwhile: it ends.
                    broker.forget_moved(&m.client);
                    return;
                }
                m.to = n;
                m.claim = claim;
            }
            owner => {
                // Back here, let go by its owner, or never readable there:
                // this node keeps it (merged into a session of the client
                // here), and owns it.
                take_back(&inner, &m.client, &session, owner.map(|(n, _)| n)).await;
                return;
            }
        }
    }
}

/// Bring a session this node was handing on back in, and claim it again
/// (unless it is this node's already).
async fn take_back(inner: &Inner, client: &str, form: &[u8], owner: Option<NodeId>) {
    let Some(broker) = inner.broker.get() else {
        return;
    };
    match broker.import_session(form) {
        Ok(imported) => {
            let stored = imported.stored;
            if futures::future::poll_fn(|cx| stored.poll(cx)).await.is_ok() {
                broker.forget_moved(client);
            }
            if owner != Some(inner.me) {
                let claim = Claimed {
                    clean: false,
                    user: imported.user,
                };
                queue(inner, client.to_string(), Some(claim));
            }
        }
        Err(e) => {
            tracing::error!(client, error = %e, "a session handed back could not be read");
        }
    }
}

/// Tell `m.to`, once, that there is nothing for it (or that the session
/// is not the connecting user's).
async fn send_once(inner: &Inner, m: &Move, not_yours: bool) {
    if let Some(link) = inner.link(m.to) {
        let request = Request::Adopt {
            client: m.client.clone(),
            session: None,
            id: rand_id(),
            not_yours,
        };
        let _ = link
            .call(request, Duration::from_secs(inner.config.forward_timeout))
            .await;
    }
}

/// A hand-on's number: random, so two nodes' never meet.
fn rand_id() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // The clock's nanoseconds, should the generator ever fail.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t;
    }
    u64::from_be_bytes(b)
}
