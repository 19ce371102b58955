//! Who owns each client's session. A CONNECT claims the session for its
//! node through the log ([`Command::Owners`]), in order with the node's
//! other ownership changes; the node that had the session hears of it as
//! it applies the claim, closes the client's connection there (0x8E) and
//! hands the session on ([`Request::Adopt`]); the CONNECT waits for it,
//! bounded, and then resumes it as a local one.
//!
//! A node that was down when its session was claimed keeps the session in
//! its store; once it is back and has caught up with the log, it hands
//! on every session it holds that another node owns, and the owner merges
//! it into the session the client has there.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Inner, Move, NodeId, Request, Response};
use crate::sync::{lock, read};

/// Make this node the owner of `client`'s session (see
/// [`petrel_broker::Peers::claim`]).
pub(super) async fn claim(inner: Arc<Inner>, client: String, clean: bool) -> Result<(), String> {
    let owner = {
        let c = lock(&inner.changes);
        let pending = c.in_flight.contains(&client) || c.owners.iter().any(|(x, _)| *x == client);
        let owner = read(&inner.routes).owner(&client);
        if !pending && owner == Some(inner.me) {
            // Already this node's: nothing to agree, with or without a
            // quorum.
            return Ok(());
        }
        owner
    };
    if !inner.available() {
        if owner.is_some_and(|o| o != inner.me) {
            return Err(
                "this node reaches no majority of the cluster: the session can't be taken over from the node that has it"
                    .into(),
            );
        }
        // Nobody has it (as far as this node knows): the client is let in,
        // and the claim written when the cluster answers (a node that had
        // the session after all hands it on then, merged into this one).
        lock(&inner.changes).owners.push((client, Some(clean)));
        inner.wake.notify_one();
        return Ok(());
    }
    let (arrived_tx, arrived) = oneshot::channel();
    lock(&inner.arrivals).insert(client.clone(), arrived_tx);
    let (tx, rx) = oneshot::channel();
    {
        let mut c = lock(&inner.changes);
        let i = c.owners.len();
        c.owners.push((client.clone(), Some(clean)));
        c.claims.push((i, tx));
    }
    inner.wake.notify_one();
    let previous = rx
        .await
        .unwrap_or_else(|_| Err("the cluster node stopped".into()));
    let previous = match previous {
        Ok(p) => p,
        Err(e) => {
            lock(&inner.arrivals).remove(&client);
            return Err(e);
        }
    };
    match previous {
        Some(p) if p != inner.me => {
            let wait = Duration::from_secs(inner.config.forward_timeout);
            if tokio::time::timeout(wait, arrived).await.is_err() {
                lock(&inner.arrivals).remove(&client);
                tracing::warn!(
                    client,
                    node = p,
                    "the node that had this session did not hand it on in time: it comes when that node is back"
                );
            }
        }
        _ => {
            lock(&inner.arrivals).remove(&client);
        }
    }
    Ok(())
}

/// Node `from` hands on `client`'s session: bring it in, then let the
/// CONNECT that waits for it go on.
pub(super) async fn adopt(
    inner: &Inner,
    from: NodeId,
    client: String,
    session: Option<Vec<u8>>,
) -> Response {
    let Some(broker) = inner.broker.get() else {
        return Response::Failed("not started".into());
    };
    if let Some(bytes) = session {
        match broker.import_session(&bytes) {
            Ok((id, commit)) => {
                if let Err(e) = futures::future::poll_fn(|cx| commit.poll(cx)).await {
                    return Response::Failed(e.to_string());
                }
                tracing::info!(client = id, from, "session taken over from another node");
            }
            Err(e) => {
                tracing::warn!(client, from, error = %e, "a session from another node could not be read: refused");
                return Response::Failed(e.to_string());
            }
        }
    }
    let answer = super::flushed(inner);
    if let Some(tx) = lock(&inner.arrivals).remove(&client) {
        let _ = tx.send(());
    }
    answer
}

/// Hand on the sessions other nodes take from this one, as the claims are
/// applied. Claims applied before this node caught up with the log (a
/// restart replays old ones) are left to [`hand_on_held`], which looks at
/// the owners as they are once it has.
pub(super) async fn hand_on(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Move>) {
    while let Some(m) = rx.recv().await {
        if inner.caught_up.load(Ordering::Acquire) {
            tokio::spawn(move_session(inner.clone(), m));
        }
    }
}

/// Hand on every session this node holds that another node owns.
pub(super) async fn hand_on_held(inner: Arc<Inner>) {
    inner.caught_up.store(true, Ordering::Release);
    let Some(broker) = inner.broker.get() else {
        return;
    };
    let moves: Vec<Move> = {
        let routes = read(&inner.routes);
        broker
            .session_ids()
            .into_iter()
            .filter_map(|client| match routes.owner(&client) {
                Some(to) if to != inner.me => Some(Move {
                    client,
                    to,
                    clean: false,
                }),
                _ => None,
            })
            .collect()
    };
    if !moves.is_empty() {
        tracing::info!(
            sessions = moves.len(),
            "handing on sessions other nodes took over while this one was away"
        );
    }
    for m in moves {
        tokio::spawn(move_session(inner.clone(), m));
    }
}

/// Take `m`'s session out of this node and hand it to its owner, until
/// the owner has it (in its store). Meanwhile the session's entries stay
/// in this node's store: a crash loses nothing, and the next start hands
/// it on again. If the session changed owner meanwhile it goes to the new
/// one; if it came back here, it is brought back in; if its owner ended
/// it, it goes.
async fn move_session(inner: Arc<Inner>, m: Move) {
    let Some(broker) = inner.broker.get() else {
        return;
    };
    if read(&inner.routes).owner(&m.client) != Some(m.to) {
        // Claimed again since: whoever had it then hands it on.
        return;
    }
    let session = broker.export_session(&m.client, m.clean).await;
    let wait = Duration::from_secs(inner.config.forward_timeout);
    let mut pause = Duration::from_millis(200);
    let mut to = m.to;
    loop {
        let Some(link) = inner.control.get(&to) else {
            return;
        };
        let request = Request::Adopt {
            client: m.client.clone(),
            session: session.clone(),
        };
        match link.call(request, wait).await {
            Ok(Response::Done) => {
                if session.is_some() {
                    broker.forget_moved(&m.client);
                }
                return;
            }
            other => {
                let e = match other {
                    Ok(Response::Failed(e)) => e,
                    Ok(_) => "unexpected answer".into(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(client = m.client, node = to, error = %e, "a session could not be handed on yet");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        match read(&inner.routes).owner(&m.client) {
            Some(n) if n == inner.me => {
                // Back here: merged into the session the client has now.
                if let Some(bytes) = &session {
                    if let Err(e) = broker.import_session(bytes) {
                        tracing::error!(client = m.client, error = %e, "a session handed back could not be read");
                    }
                }
                return;
            }
            Some(n) => to = n,
            None => {
                // Its owner ended it: nothing to keep.
                if session.is_some() {
                    broker.forget_moved(&m.client);
                }
                return;
            }
        }
    }
}
