//! `petrel`: the Petrel MQTT broker on the command line.
//!
//! * `petrel broker` — with no configuration, listens on 127.0.0.1:1883 and
//!   allows anonymous clients (as Mosquitto 2 does without a config; a
//!   listener elsewhere needs authentication or `allow_anonymous = true`);
//!   `-p PORT` and `--bind ADDR` override the listener, `--config FILE` reads
//!   a TOML configuration (see `petrel_broker::config`).
//! * `petrel pub` / `petrel sub` — command-line clients with the flag
//!   letters of `mosquitto_pub` / `mosquitto_sub`.
//! * `petrel bench pairs|fanout|fanin` — load a broker over loopback and
//!   report delivered messages per second.
//! * `petrel passwd` — manage a password file, with `mosquitto_passwd`'s
//!   flags (`-c`, `-b`, `-D`, `-U`), argon2id by default.
//! * `petrel ctl` — the admin API (`[http]`, `--http`) from the command
//!   line: clients, kick, sessions, retained messages, stats.
//! * `petrel token` — a new API token and the `token_hash` for `[http]`.
// One exception, below: jemalloc's configuration symbol.
#![deny(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod ctl;
mod passwd;
mod store;
mod tools;
use petrel_broker::config::ListenerConfig;
use petrel_broker::{Broker, BrokerConfig, Certificates, Durability, LogFormat, Server};

#[derive(Parser)]
#[command(
    name = "petrel",
    version,
    about = "Petrel: an MQTT 3.1, 3.1.1 and 5.0 broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (default: 127.0.0.1:1883, anonymous access).
    Broker(BrokerArgs),
    /// Publish messages (flags as mosquitto_pub's).
    #[command(name = "pub", disable_help_flag = true)]
    Pub(tools::PubArgs),
    /// Subscribe and print messages (flags as mosquitto_sub's).
    #[command(name = "sub", disable_help_flag = true)]
    Sub(tools::SubArgs),
    /// Load a broker over loopback and report delivered messages per second.
    Bench(bench::BenchArgs),
    /// Manage a password file (flags as mosquitto_passwd's).
    Passwd(passwd::PasswdArgs),
    /// Check a data directory's durable store, or salvage what is readable.
    Store(store::StoreArgs),
    /// Ask a running broker through its admin API (`[http]`, `--http`).
    Ctl(ctl::CtlArgs),
    /// A node of a cluster (`[cluster]`): `petrel cluster status`.
    Cluster(tools::ClusterArgs),
    /// Make a new admin API token, and the `token_hash` line for `[http]`.
    Token,
}

#[derive(clap::Args)]
struct BrokerArgs {
    /// TOML configuration file (listeners, limits, queue sizes, $SYS interval, log level).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this port instead of the configured listeners (as Mosquitto's -p).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Listen on this address instead of the configured listeners' (default
    /// 127.0.0.1); `ADDR:PORT` sets the port too.
    #[arg(long = "bind", value_name = "ADDR")]
    bind: Option<String>,
    /// Serve metrics, the admin API and the dashboard on this address
    /// (instead of the configured `[http]` bind).
    #[arg(long = "http", value_name = "ADDR:PORT")]
    http: Option<String>,
    /// Log more (-v debug, -vv trace), overriding the configured level.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    /// Worker threads (default: one per core the process may use). 1 runs
    /// everything on one thread, without cross-thread wake-ups.
    #[arg(long = "threads", value_name = "N")]
    threads: Option<usize>,
    /// Keep the durable store (sessions, queued and in-flight messages,
    /// retained messages) in this directory, instead of the configured
    /// `data_dir` (default: $XDG_DATA_HOME/petrel, else
    /// ~/.local/share/petrel).
    #[arg(long = "data-dir", value_name = "DIR", conflicts_with = "memory")]
    data_dir: Option<PathBuf>,
    /// Keep nothing on disk: everything is lost when the broker stops (as
    /// `durability = "none"`).
    #[arg(long = "memory")]
    memory: bool,
}

/// Where the broker keeps its state when nothing says: the per-user data
/// directory ($XDG_DATA_HOME/petrel, else ~/.local/share/petrel).
fn default_data_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|h| h.join(".local").join("share"))
    })?;
    Some(base.join("petrel"))
}

/// jemalloc keeps each size class on slabs of its own and, from a
/// background thread, gives pages back to the system once they have been
/// free a while (a second in this workspace's builds: `.cargo/config.toml`).
/// When connections hibernate, the memory their tasks held leaves the
/// process; with the system allocator it stayed resident, in holes between
/// the small objects that outlive them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (before `main`): the
/// same in a `cargo install` as in this repository's builds, which also
/// set them at compile time (`.cargo/config.toml`). `MALLOC_CONF` in the
/// environment (`_RJEM_MALLOC_CONF`) still overrides them.
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a static NUL-terminated
    // string, as jemalloc's `const char *malloc_conf` wants.
    Some(unsafe { &*c"dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true".as_ptr() });

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Broker(args) => run_broker(args),
        Command::Pub(args) => tools::publish(args),
        Command::Sub(args) => tools::subscribe(args),
        Command::Passwd(args) => passwd::run(args),
        Command::Store(args) => store::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Cluster(args) => tools::cluster(args),
        Command::Token => match petrel_admin::new_token() {
            Ok(token) => {
                println!("token (give it to clients of the API; it is not stored):\n  {token}");
                println!(
                    "for the configuration's [http] table:\n  token_hash = \"{}\"",
                    petrel_admin::token_hash(&token)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("petrel token: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => match bench::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("petrel bench: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn load_config(args: &BrokerArgs) -> Result<BrokerConfig, String> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            BrokerConfig::from_toml(&text)
                .map_err(|e| format!("invalid configuration in {}: {e}", path.display()))?
        }
        None => BrokerConfig::default(),
    };
    if args.port.is_some() || args.bind.is_some() {
        // One plain TCP listener, in place of the configured ones.
        let first = config.listeners.iter().find_map(|l| l.bind);
        let (bind_ip, bind_port) = match args.bind.as_deref().map(parse_bind).transpose()? {
            Some((ip, port)) => (Some(ip), port),
            None => (None, None),
        };
        let ip =
            bind_ip.unwrap_or_else(|| first.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip()));
        let port = args
            .port
            .or(bind_port)
            .unwrap_or_else(|| first.map_or(1883, |a| a.port()));
        config.listeners = vec![ListenerConfig::tcp(SocketAddr::new(ip, port))];
    }
    if let Some(http) = &args.http {
        let addr: SocketAddr = http.parse().map_err(|_| {
            let hint = petrel_broker::config::bind_hint(http, 8080)
                .unwrap_or_else(|| "write an IP address and port".into());
            format!("--http {http}: {hint}")
        })?;
        let mut h = config.http.take().unwrap_or_default();
        h.bind = addr;
        config.http = Some(h);
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    if args.memory {
        config.durability = Durability::None;
    }
    if config.durability != Durability::None && config.data_dir.is_none() {
        // Durable by default: nothing acknowledged is lost when the broker
        // is killed.
        config.data_dir = Some(default_data_dir().ok_or(
            "no data directory: HOME and XDG_DATA_HOME are unset; give --data-dir DIR or --memory",
        )?);
    }
    Ok(config)
}

/// `--bind`'s value: an IP address, or an address and port; a host name
/// is refused with what to write instead.
fn parse_bind(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    let host = text.rsplit_once(':').map_or(text, |(h, _)| h);
    Err(if host.eq_ignore_ascii_case("localhost") {
        format!("--bind {text}: --bind takes an IP address, not a host name: write --bind 127.0.0.1 (or --bind ::1)")
    } else {
        format!("--bind {text}: --bind takes an IP address (such as 0.0.0.0 for every address, or 127.0.0.1), optionally with :PORT")
    })
}

/// Changes the log level while the broker runs (SIGHUP).
type LogLevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter for `level`. The consensus library (openraft, with `[cluster]`) says at `info` what
/// is routine for it (each vote, each log write); its warnings and errors
/// are kept, and `-vv` (trace, debug) shows the rest.
fn level_filter(level: &str) -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::new(level);
    match level {
        "debug" | "trace" => filter,
        _ => filter.add_directive("openraft=warn".parse().expect("a valid directive")),
    }
}

/// Log to `log_file` (appended) or standard error, as text (colours only
/// on a terminal) or JSON lines; the handle that changes its level, unless
/// `RUST_LOG` decides it.
fn init_logging(config: &BrokerConfig, level: &str) -> Result<Option<LogLevelHandle>, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| level_filter(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let (writer, terminal) = match &config.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match config.log_format {
        LogFormat::Text => registry.with(layer.with_ansi(terminal)).init(),
        LogFormat::Json => registry.with(layer.json().with_ansi(false)).init(),
    }
    Ok((!fixed).then_some(handle))
}

fn run_broker(args: BrokerArgs) -> ExitCode {
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("petrel: {e}");
            return ExitCode::from(2);
        }
    };
    let level = match args.verbose {
        0 => config.log_level.as_str(),
        1 => "debug",
        _ => "trace",
    };
    let log_level = match init_logging(&config, level) {
        Ok(handle) => handle.filter(|_| args.verbose == 0),
        Err(e) => {
            eprintln!("petrel: {e}");
            return ExitCode::from(2);
        }
    };
    match (&config.data_dir, config.durability) {
        (_, Durability::None) | (None, _) => {
            tracing::info!("no data directory (--memory): everything is lost when the broker stops")
        }
        (Some(dir), d) => {
            tracing::info!(data_dir = %dir.display(), durability = ?d, "keeping state in the data directory")
        }
    }

    let runtime = match args.threads {
        Some(0) => {
            eprintln!("petrel: --threads must be at least 1");
            return ExitCode::from(2);
        }
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        // One core (or pinned to one): no worker pool to wake across.
        None if std::thread::available_parallelism().map_or(1, |n| n.get()) == 1 => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("petrel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before anything else: a signal must never find its default
        // action (SIGHUP's would kill the broker without saving).
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("petrel: cannot handle signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let http = config.http.clone();
        // A node of a cluster ([cluster]): made before the broker, which
        // tells it of subscriptions and messages; started once it is built.
        let cluster = match config
            .cluster
            .clone()
            .map(petrel_cluster::Cluster::new)
            .transpose()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("petrel: {e}");
                return ExitCode::from(2);
            }
        };
        let mut builder = Broker::builder(config);
        if let Some(c) = &cluster {
            builder = builder.peers(c.peers());
        }
        let broker = match builder.build() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("petrel: {e}");
                return ExitCode::from(2);
            }
        };
        let server = match Server::bind(broker.clone()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("petrel: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(c) = &cluster {
            if let Err(e) = c.start(broker.clone()).await {
                eprintln!("petrel: {e}");
                return ExitCode::FAILURE;
            }
        }
        if let Some(http) = http {
            match petrel_admin::AdminServer::bind(broker.clone(), &http).await {
                Ok(admin) => {
                    let admin = match &cluster {
                        Some(c) => admin
                            .with_metrics(std::sync::Arc::new(tools::ClusterMetrics(c.clone())))
                            .with_membership(std::sync::Arc::new(tools::ClusterMembership(
                                c.clone(),
                            ))),
                        None => admin,
                    };
                    tokio::spawn(admin.run());
                }
                Err(e) => {
                    eprintln!("petrel: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        // Bridges to other brokers ([[bridge]]): stopped (each side told
        // DISCONNECT) as soon as the broker starts shutting down.
        let bridges = match petrel_bridge::start_all(&broker, &server.local()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("petrel: {e}");
                return ExitCode::from(2);
            }
        };
        if !bridges.is_empty() {
            let mut shutdown = broker.shutdown_signal();
            tokio::spawn(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
                futures::future::join_all(bridges.into_iter().map(|b| b.stop())).await;
            });
        }
        let reloader = Reloader {
            broker: broker.clone(),
            certificates: server.certificates(),
            args,
            log_level,
        };
        tokio::spawn(signals.handle(reloader));
        server.run().await;
        ExitCode::SUCCESS
    })
}

/// The signals the broker answers: SIGINT and SIGTERM shut it down
/// gracefully; SIGHUP reloads the password, ACL and credentials files.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn handle(mut self, reloader: Reloader) {
        loop {
            #[cfg(unix)]
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = self.term.recv() => break,
                _ = self.hup.recv() => reloader.reload(),
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
                break;
            }
        }
        tracing::info!("signal received; shutting down");
        reloader.broker.shutdown();
    }
}

/// What SIGHUP reloads.
struct Reloader {
    broker: Broker,
    certificates: Certificates,
    /// The command line, to read the configuration as at start.
    args: BrokerArgs,
    /// None when `-v` or `RUST_LOG` fixed the level.
    log_level: Option<LogLevelHandle>,
}

/// SIGHUP: the configuration file read again and put in force without
/// dropping a connection (authentication, ACLs, the limits that can change
/// live, the log level), the certificates read again; a file that can't be
/// used leaves everything as it was. Never stops the broker.
#[cfg(unix)]
impl Reloader {
    fn reload(&self) {
        let config = match load_config(&self.args) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the configuration in force stays");
                return;
            }
        };
        let level = config.log_level;
        match self.broker.reconfigure(config) {
            Ok(r) => {
                tracing::info!(
                    sessions = r.sessions,
                    "configuration reloaded (authentication, ACLs and limits in force)"
                );
                if !r.restart_needed.is_empty() {
                    tracing::warn!(
                        settings = %r.restart_needed.join(", "),
                        "these settings changed but keep their running values until a restart"
                    );
                }
                if let Some(h) = &self.log_level {
                    match h.reload(level_filter(level.as_str())) {
                        Ok(()) => tracing::info!(level = level.as_str(), "log level in force"),
                        Err(e) => tracing::error!(error = %e, "the log level could not be changed"),
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the configuration in force stays");
                return;
            }
        }
        match self.certificates.reload() {
            Ok(0) => {}
            Ok(n) => tracing::info!(listeners = n, "reloaded the TLS certificates"),
            Err(e) => {
                tracing::error!(error = %e, "certificate reload refused; the certificates in force stay")
            }
        }
    }
}

#[cfg(not(unix))]
impl Reloader {
    fn reload(&self) {}
}
