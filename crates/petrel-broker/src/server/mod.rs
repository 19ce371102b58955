//! The tokio server around the engine: listeners, one connection driver
//! per connection (the same for every transport), hibernation of quiet
//! connections, the once-a-second tick, graceful shutdown.

mod driver;
mod hibernate;
mod outq;
mod transport;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::core::engine::Broker;
use crate::stats::Stats;
use hibernate::Hibernation;

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A broker bound to its listeners, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    broker: Broker,
    listeners: Vec<TcpListener>,
}

/// What every connection of one server shares.
#[derive(Debug)]
struct Ctx {
    broker: Broker,
    hibernation: Hibernation,
    codec_limits: petrel_codec::Limits,
    /// Quiet time after which a connection hibernates (none: never).
    hibernate_after: Option<Duration>,
}

impl Ctx {
    fn new(broker: Broker) -> Arc<Self> {
        let after = broker.config().limits.hibernate_after;
        Arc::new(Self {
            codec_limits: broker.session_config().codec_limits(),
            hibernation: Hibernation::new(broker.clone()),
            hibernate_after: (after > 0).then(|| Duration::from_secs(after)),
            broker,
        })
    }
}

/// Live connection tasks, to bound them and to wait for them at shutdown.
#[derive(Debug, Default)]
struct Live {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one connection in [`Live`] while it exists.
struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Server {
    /// Bind every listener of the broker's configuration, after reading
    /// back what the `persistence` file holds.
    pub async fn bind(broker: Broker) -> io::Result<Self> {
        if let Some(path) = &broker.config().persistence {
            let (sessions, retained) = broker.load().map_err(|e| {
                io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })?;
            tracing::info!(sessions, retained, file = %path.display(), "restored");
        }
        let mut listeners = Vec::new();
        for l in &broker.config().listeners {
            let listener = TcpListener::bind(l.bind).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.bind))
            })?;
            listeners.push(listener);
        }
        Ok(Self { broker, listeners })
    }

    /// The addresses actually bound (a configured port 0 becomes a real one).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The broker this server runs.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Serve until [`Broker::shutdown`]: then stop accepting, ask every
    /// connection to close (5.0 DISCONNECT 0x8B), and wait for them (at most
    /// five seconds).
    pub async fn run(self) {
        let ctx = Ctx::new(self.broker.clone());
        let live = Arc::new(Live::default());
        for l in &self.listeners {
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "listening");
            }
        }
        // If this future is dropped (its runtime shutting down, say) rather
        // than run to the end, hibernating connections are woken all the
        // same: nothing else would close their sockets or hand their
        // sessions back.
        let wake_all = WakeAll(ctx.hibernation.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for listener in self.listeners {
            tasks.spawn(accept_loop(ctx.clone(), listener, live.clone()));
        }
        tasks.spawn(tick(ctx.clone()));
        let mut shutdown = self.broker.shutdown_signal();
        let _ = shutdown.wait_for(|stop| *stop).await;
        tracing::info!("shutting down");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        // Hibernating connections wake to say goodbye like the others.
        drop(wake_all);
        let drained = async {
            loop {
                let idle = live.idle.notified();
                if live.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
        if let Some(path) = &self.broker.config().persistence {
            match self.broker.save() {
                Ok((sessions, retained)) => {
                    tracing::info!(sessions, retained, file = %path.display(), "saved");
                }
                Err(e) => tracing::error!(error = %e, file = %path.display(), "could not save"),
            }
        }
        tracing::info!("stopped");
    }
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, live: Arc<Live>) {
    let max = ctx.broker.config().limits.max_connections;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if live.count.fetch_add(1, Ordering::AcqRel) >= max {
            live.count.fetch_sub(1, Ordering::AcqRel);
            Stats::add(&ctx.broker.engine.stats.connections_refused, 1);
            tracing::warn!(%peer, max, "connection limit reached; closing");
            drop(stream);
            continue;
        }
        let guard = LiveGuard(live.clone());
        let _ = stream.set_nodelay(true);
        tokio::spawn(driver::serve(ctx.clone(), stream, peer, Some(guard)));
    }
}

/// Wakes every hibernating connection when dropped.
struct WakeAll(Hibernation);

impl Drop for WakeAll {
    fn drop(&mut self) {
        self.0.wake_all();
    }
}

/// Once a second: hibernating connections' deadlines, and the engine's
/// housekeeping (session expiry, wills, retained expiry, `$SYS`).
async fn tick(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        ctx.hibernation.wake_due(now);
        ctx.broker.tick(now);
    }
}
