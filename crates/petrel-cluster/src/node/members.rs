//! Membership at run time: nodes join (as learners with a full copy of
//! the log, promoted to voters while there are fewer than three, or five
//! once there are five nodes) and leave. Asked of any node; made by the
//! leader.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, Raft};

use super::{members_line, Inner};
use crate::net::{Change, Request, Response};
use crate::types::{Command, NodeId, Proposal, TypeConfig};

/// How long a membership change may take (a joining node first copies
/// the log).
pub(super) const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Have the leader make `change`: the membership after.
pub(super) async fn change(inner: &Arc<Inner>, change: Change) -> Result<String, String> {
    let raft = inner.raft.get().ok_or("the node has not started")?;
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    let pause = Duration::from_millis(inner.config.heartbeat_ms.min(100));
    loop {
        let leader = raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == inner.me => return make(raft, change).await,
            Some(l) => {
                if let Some(link) = inner.link(l) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match link.call(Request::Change(change.clone()), left).await {
                        Ok(Response::Changed(m)) => return Ok(m),
                        Ok(Response::Failed(e)) => return Err(e),
                        _ => {}
                    }
                }
            }
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(
                "no leader made the change in time (is a majority of the nodes up?)".into(),
            );
        }
        tokio::time::sleep(pause).await;
    }
}

/// On the leader, now and then: make voters of learners that have caught
/// up while the cluster has fewer voters than it should (a learner that
/// was behind when a voter left).
pub(super) async fn keep_voters(inner: Arc<Inner>, raft: Raft<TypeConfig>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leads = {
            let m = raft.metrics();
            let now = m.borrow();
            now.current_leader == Some(inner.me)
        };
        if leads {
            let _one = ONE.lock().await;
            if let Err(e) = promote(&raft).await {
                tracing::debug!(error = %e, "learners not made voters yet");
            }
        }
    }
}

/// How many voters a cluster of `nodes` nodes has: three or five (an
/// even number tolerates no more failures than the odd one below it),
/// all of them below three.
fn voters_for(nodes: usize) -> usize {
    match nodes {
        n if n >= 5 => 5,
        n if n >= 3 => 3,
        n => n,
    }
}

/// Make `change`, on the leader.
pub(super) async fn make(raft: &Raft<TypeConfig>, change: Change) -> Result<String, String> {
    let _one = ONE.lock().await;
    let membership = || {
        raft.metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    };
    let m = membership();
    match change {
        Change::Join { id, addr } => match m.nodes().find(|(n, _)| **n == id) {
            Some((_, n)) if n.addr != addr => {
                return Err(format!("node {id} is a member already, at {}", n.addr));
            }
            Some(_) => {}
            None => {
                // Blocking: answered once the learner has the log.
                let added = raft.add_learner(id, BasicNode::new(&addr), true);
                match tokio::time::timeout(CHANGE_TIMEOUT, added).await {
                    Ok(r) => r.map_err(|e| format!("node {id} not added: {e}"))?,
                    Err(_) => {
                        return Err(format!(
                            "node {id} is a learner now, but has not copied the log in {} s: \
                             is it running, reachable at {addr}, with the cluster's secret? \
                             (`petrel cluster leave {id}` takes it out again)",
                            CHANGE_TIMEOUT.as_secs()
                        ))
                    }
                };
                tracing::info!(node = id, %addr, "node joined as a learner");
            }
        },
        Change::Leave { id } => {
            if !m.nodes().any(|(n, _)| *n == id) {
                return Err(format!("node {id} is not a member"));
            }
            let me = raft.metrics().borrow().id;
            if me == id {
                return Err(format!(
                    "node {id} leads the cluster: stop it (another node takes the lead) and ask again"
                ));
            }
            // The voters after: without it, and as many as the cluster's
            // new size wants (the highest numbers made learners, or
            // learners made voters).
            let voters: BTreeSet<NodeId> = m.voter_ids().collect();
            let want = voters_for(m.nodes().count() - 1);
            let mut keep: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
            while keep.len() > want {
                let Some(last) = keep.iter().rev().copied().find(|v| *v != me) else {
                    break;
                };
                keep.remove(&last);
            }
            let ready = caught_up(raft);
            fill(
                &mut keep,
                m.learner_ids().filter(|l| *l != id && ready.contains(l)),
                want,
            );
            if keep != voters {
                raft.change_membership(keep, true)
                    .await
                    .map_err(|e| format!("node {id} not removed: {e}"))?;
            }
            if membership().nodes().any(|(n, _)| *n == id) {
                raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                    .await
                    .map_err(|e| format!("node {id} not removed: {e}"))?;
            }
            // Its routes and its sessions' ownership go with it.
            raft.client_write(Proposal {
                origin: None,
                command: Command::Reset {
                    node: id,
                    filters: Vec::new(),
                    clients: Vec::new(),
                },
            })
            .await
            .map_err(|e| format!("node {id}'s routes not removed: {e}"))?;
            tracing::info!(node = id, "node left the cluster");
        }
    }
    promote(raft).await?;
    Ok(members_line(&membership()))
}

/// One membership change at a time (openraft refuses a second while one
/// is under way): a join's or a leave's, and the background promotion.
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How far behind the leader's log a learner may be and be made a voter.
const CAUGHT_UP: u64 = 64;

/// The nodes the leader has replicated (nearly) its whole log to.
fn caught_up(raft: &Raft<TypeConfig>) -> BTreeSet<NodeId> {
    let metrics = raft.metrics();
    let now = metrics.borrow();
    let last = now.last_log_index.unwrap_or(0);
    now.replication
        .iter()
        .flatten()
        .filter(|(_, at)| at.is_some_and(|l| l.index + CAUGHT_UP >= last))
        .map(|(n, _)| *n)
        .collect()
}

/// Promote learners that have (nearly) the whole log while there are
/// fewer voters than [`voters_for`] the cluster's size.
async fn promote(raft: &Raft<TypeConfig>) -> Result<(), String> {
    let m = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    if m.voter_ids().count() >= voters_for(m.nodes().count()) {
        return Ok(());
    }
    // A learner just added is caught up; the metrics that say so may
    // follow a moment later.
    let learners: BTreeSet<NodeId> = m.learner_ids().collect();
    let mut caught_up = caught_up(raft);
    for _ in 0..20 {
        if learners.is_subset(&caught_up) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        caught_up = self::caught_up(raft);
    }
    let mut voters: BTreeSet<NodeId> = m.voter_ids().collect();
    let want = voters_for(m.nodes().count());
    let before = voters.len();
    fill(
        &mut voters,
        m.learner_ids().filter(|l| caught_up.contains(l)),
        want,
    );
    if voters.len() == before {
        return Ok(());
    }
    raft.change_membership(voters, true)
        .await
        .map(|_| ())
        .map_err(|e| format!("learners not promoted: {e}"))
}

/// Add `learners`, in order, to `voters` until there are `want`.
fn fill(voters: &mut BTreeSet<NodeId>, learners: impl Iterator<Item = NodeId>, want: usize) {
    for l in learners {
        if voters.len() >= want {
            break;
        }
        voters.insert(l);
    }
}

#[cfg(test)]
mod tests {
    use super::voters_for;

    #[test]
    fn three_or_five_voters() {
        let got: Vec<usize> = (1..=8).map(voters_for).collect();
        assert_eq!(got, [1, 2, 3, 3, 5, 5, 5, 5]);
    }
}
