//! The tokio server around the engine: listeners, one connection driver
//! per connection (the same for every transport), hibernation of quiet
//! connections, the once-a-second tick, graceful shutdown.

mod admission;
mod driver;
mod hibernate;
mod listener;
mod outq;
mod proxy;
mod quic;
mod running;
mod tls;
mod transport;
mod ws;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::core::engine::{Broker, Internal, ListenerRules, Peer};
use hibernate::Hibernation;
use listener::Bound;
use tls::TlsAcceptor;

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A broker bound to its listeners, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    broker: Broker,
    listeners: Vec<Arc<Bound>>,
    ctx: Arc<Ctx>,
    live: Arc<Live>,
}

/// Opens connections to the server from inside the program, without a
/// socket (a bridge's local side): each is an in-memory byte stream served
/// by the same connection driver as every network client, so its session
/// (persistent, stored, with its queue and in-flight messages) is a
/// client's like any other. The stream's user is authenticated without
/// credentials and may do anything; the server counts it and waits for it
/// at shutdown.
#[derive(Clone, Debug)]
pub struct LocalConnector {
    ctx: Arc<Ctx>,
    live: Arc<Live>,
}

impl LocalConnector {
    /// A new connection, as `internal` says: speak MQTT on the returned
    /// stream, starting with CONNECT.
    pub fn connect(&self, internal: Internal) -> tokio::io::DuplexStream {
        let (near, far) = tokio::io::duplex(64 * 1024);
        if self.ctx.broker.is_shut_down() {
            // Shutting down: the stream ends at once.
            return near;
        }
        let (r, w) = tokio::io::split(far);
        self.live.count.fetch_add(1, Ordering::AcqRel);
        let guard = LiveGuard {
            live: self.live.clone(),
            source: None,
        };
        let peer = Box::new(Peer {
            rules: Arc::new(ListenerRules {
                name: Arc::from(format!("local {}", internal.user)),
                ..ListenerRules::default()
            }),
            internal: Some(internal),
            ..Peer::default()
        });
        tokio::spawn(driver::serve(
            self.ctx.clone(),
            transport::Pipe(r, w),
            peer,
            Some(guard),
        ));
        near
    }
}

/// The certificates of a server's TLS listeners, to read again (on SIGHUP).
#[derive(Clone, Debug)]
pub struct Certificates(Vec<Arc<TlsAcceptor>>);

impl Certificates {
    /// Read every TLS listener's certificate, key and CA files again: new
    /// connections use them, open ones go on undisturbed. All or nothing:
    /// if one listener's files can't be used, none changes. Returns how
    /// many listeners were reloaded.
    pub fn reload(&self) -> io::Result<usize> {
        let fresh = self
            .0
            .iter()
            .map(|t| t.prepare())
            .collect::<io::Result<Vec<_>>>()?;
        for (t, config) in self.0.iter().zip(fresh) {
            t.install(config);
        }
        Ok(self.0.len())
    }
}

/// What every connection of one server shares.
#[derive(Debug)]
struct Ctx {
    broker: Broker,
    hibernation: Hibernation,
    codec_limits: petrel_codec::Limits,
    /// Quiet time after which a connection hibernates (none: never).
    hibernate_after: Option<Duration>,
    /// TCP keepalive's idle time (none: off).
    tcp_keepalive: Option<Duration>,
    /// How long a partly received packet may wait for its next byte.
    packet_timeout: Duration,
    /// Per-address rates and caps, and unfinished CONNECTs.
    admission: Arc<admission::Admission>,
    /// When the server started: connections count some instants from it
    /// in whole seconds.
    epoch: Instant,
    /// Bytes of large packets being received, over every connection, and
    /// the most there may be.
    partial_bytes: std::sync::atomic::AtomicUsize,
    max_partial_bytes: usize,
    /// The connection tasks that are running (not hibernating): their
    /// wakers, woken at shutdown, and their deadlines.
    awake: std::sync::Mutex<running::Running>,
    /// The server is shutting down: set before `awake` is woken.
    stopping: std::sync::atomic::AtomicBool,
    /// Tells the timer task of an earlier deadline (and of the end).
    timer_told: Arc<Notify>,
    /// The timer task was started (by the first connection).
    timer_started: std::sync::atomic::AtomicBool,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // The timer task ends when it finds the context gone.
        self.timer_told.notify_one();
    }
}

impl Ctx {
    fn new(broker: Broker) -> Arc<Self> {
        let after = broker.config().limits.hibernate_after;
        Arc::new(Self {
            codec_limits: broker.session_config().codec_limits(),
            hibernation: Hibernation::new(broker.clone()),
            hibernate_after: (after > 0).then(|| Duration::from_secs(after)),
            tcp_keepalive: Some(broker.config().limits.tcp_keepalive)
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            packet_timeout: Duration::from_secs(broker.config().limits.packet_timeout),
            admission: admission::Admission::new(&broker.config().limits),
            epoch: Instant::now(),
            partial_bytes: std::sync::atomic::AtomicUsize::new(0),
            max_partial_bytes: broker.config().limits.max_partial_bytes,
            awake: std::sync::Mutex::new(running::Running::default()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            timer_told: Arc::new(Notify::new()),
            timer_started: std::sync::atomic::AtomicBool::new(false),
            broker,
        })
    }
}

/// Live connection tasks, to bound them and to wait for them at shutdown:
/// the server's, and each listener's within them.
#[derive(Debug, Default)]
struct Live {
    count: AtomicUsize,
    idle: Notify,
    /// The server's count, for a listener's.
    within: Option<Arc<Self>>,
}

impl Live {
    /// A listener's count, within the server's.
    fn within(all: Arc<Self>) -> Self {
        Self {
            within: Some(all),
            ..Self::default()
        }
    }

    fn release(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Counts one connection in its listener's [`Live`] (and so the server's)
/// while it exists.
struct LiveGuard {
    live: Arc<Live>,
    /// Its place in the per-address counts.
    source: Option<admission::SourceGuard>,
}

impl LiveGuard {
    /// Its CONNECT was accepted: no longer an unfinished connection.
    fn connected(&mut self) {
        if let Some(s) = &mut self.source {
            s.connected();
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.release();
        if let Some(all) = &self.live.within {
            all.release();
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
            let keep_alive = broker.config().limits.max_keepalive;
            listeners.push(Arc::new(Bound::bind(l, keep_alive).await?));
        }
        let ctx = Ctx::new(broker.clone());
        Ok(Self {
            broker,
            listeners,
            ctx,
            live: Arc::new(Live::default()),
        })
    }

    /// What opens connections to this server from inside the program.
    pub fn local(&self) -> LocalConnector {
        LocalConnector {
            ctx: self.ctx.clone(),
            live: self.live.clone(),
        }
    }

    /// The addresses actually bound (a configured port 0 becomes a real
    /// one), in the order of the configuration; Unix sockets have none.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr())
            .collect()
    }

    /// Each listener's bound address, or none (Unix sockets), in the order
    /// of the configuration.
    pub fn listener_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.listeners.iter().map(|l| l.local_addr()).collect()
    }

    /// The TLS listeners' certificates, to reload while the server runs.
    pub fn certificates(&self) -> Certificates {
        Certificates(
            self.listeners
                .iter()
                .filter_map(|l| l.tls.clone())
                .collect(),
        )
    }

    /// The broker this server runs.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Serve until [`Broker::shutdown`]: then stop accepting, ask every
    /// connection to close (5.0 DISCONNECT 0x8B), and wait for them (at most
    /// five seconds).
    pub async fn run(self) {
        let ctx = self.ctx.clone();
        let live = self.live.clone();
        // If this future is dropped (its runtime shutting down, say) rather
        // than run to the end, hibernating connections are woken all the
        // same: nothing else would close their sockets or hand their
        // sessions back.
        let wake_all = WakeAll(ctx.hibernation.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for listener in self.listeners {
            tasks.spawn(listener.accept_loop(ctx.clone(), live.clone()));
        }
        tasks.spawn(tick(ctx.clone()));
        // The connections' timer task on the server's runtime (a connection
        // would start it otherwise, on its own).
        start_timers(&ctx);
        // Not in `tasks`: running connections hear of a shutdown even if
        // this future is dropped first (they live on in tasks of their own).
        tokio::spawn(tell_running(
            Arc::downgrade(&ctx),
            self.broker.shutdown_signal(),
        ));
        let mut shutdown = self.broker.shutdown_signal();
        let _ = shutdown.wait_for(|stop| *stop).await;
        tracing::info!("shutting down");
        stop_running(&ctx);
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

/// Wait for the broker's shutdown, then tell every running connection.
/// Holds neither the server nor the broker (a broker dropped without a
/// shutdown ends it).
async fn tell_running(ctx: std::sync::Weak<Ctx>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_ok() {
        if let Some(ctx) = ctx.upgrade() {
            stop_running(&ctx);
        }
    }
}

/// Every running connection says goodbye: each looks at `stopping` after
/// joining `awake`, so none misses it (done twice, it does nothing more).
fn stop_running(ctx: &Ctx) {
    ctx.stopping.store(true, Ordering::Release);
    let awake = crate::core::lock(&ctx.awake).all();
    awake.into_iter().for_each(std::task::Waker::wake);
}

/// Start the server's timer task unless it runs: on the server's runtime
/// when [`Server::run`] starts, or on the runtime of the first connection
/// that finds it not running (a connection opened through a
/// [`LocalConnector`] may come first, from a runtime that ends sooner).
fn start_timers(ctx: &Arc<Ctx>) {
    if !ctx.timer_started.load(Ordering::Acquire) && !ctx.timer_started.swap(true, Ordering::AcqRel)
    {
        tokio::spawn(timers(Arc::downgrade(ctx), ctx.timer_told.clone()));
    }
}

/// Says the timer task is no longer running when it ends, also when its
/// runtime drops it: the next connection to run starts another.
struct TimersRunning(std::sync::Weak<Ctx>);

impl Drop for TimersRunning {
    fn drop(&mut self) {
        if let Some(ctx) = self.0.upgrade() {
            ctx.timer_started.store(false, Ordering::Release);
        }
    }
}

/// The server's timer task (started by the first connection, so that
/// connections served without [`Server::run`] have it too): wakes each
/// running connection at its deadline.
/// Holds the server's context only while it looks (it ends once the
/// context is gone, which tells it so when dropped).
async fn timers(ctx: std::sync::Weak<Ctx>, told: Arc<Notify>) {
    let _running = TimersRunning(ctx.clone());
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    loop {
        let next = {
            let Some(ctx) = ctx.upgrade() else {
                return;
            };
            let (due, next) = crate::core::lock(&ctx.awake).due(tokio::time::Instant::now());
            due.into_iter().for_each(std::task::Waker::wake);
            next
        };
        match next {
            Some(at) => {
                sleep.as_mut().reset(at);
                tokio::select! {
                    () = &mut sleep => {}
                    () = told.notified() => {}
                }
            }
            None => told.notified().await,
        }
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
        // The room a peak of running connections left.
        crate::core::lock(&ctx.awake).slots.compact();
        ctx.broker.tick(now);
    }
}
