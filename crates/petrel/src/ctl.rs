//! `petrel ctl`: the admin API from the command line, so nobody has to
//! hand-craft curl lines. Lists print as aligned columns (`--json` prints
//! what the API answered).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

/// `petrel ctl`'s arguments.
#[derive(Args)]
pub(crate) struct CtlArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the API's JSON answer instead of columns.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

/// Where the admin API is, and how to be let in.
#[derive(Args, Debug)]
pub(crate) struct AdminArgs {
    /// The broker's HTTP listener.
    #[arg(
        long,
        env = "PETREL_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// The API token (default: $PETREL_TOKEN, else the `http.token` file
    /// the broker wrote in its data directory).
    #[arg(long, env = "PETREL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The broker's data directory, where it wrote `http.token` (default:
    /// the per-user data directory).
    #[arg(long = "data-dir", value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
}

impl AdminArgs {
    /// The API these arguments reach, each request given `timeout`.
    fn api(&self, timeout: std::time::Duration) -> Api {
        Api {
            url: self.url.clone(),
            token: token(self),
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
        }
    }

    /// One request, given `timeout`: the JSON answer (`null` for none), or
    /// what went wrong.
    pub(crate) fn call(
        &self,
        timeout: std::time::Duration,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        match self.api(timeout).call(method, path, body)? {
            Answer::Json(v) => Ok(v),
            Answer::Empty => Ok(Value::Null),
        }
    }
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Whether the broker answers (exit 0) or not (exit 1); needs no token.
    Health,
    /// The broker's counters.
    Stats,
    /// Connected clients.
    Clients {
        /// Only client ids containing this.
        #[arg(long = "client-id")]
        client_id: Option<String>,
        /// Only user names containing this.
        #[arg(long)]
        username: Option<String>,
        /// Only addresses containing this.
        #[arg(long)]
        address: Option<String>,
        /// Only this protocol version (3.1, 3.1.1, 5.0).
        #[arg(long)]
        protocol: Option<String>,
        /// The page (from 1).
        #[arg(long, default_value_t = 1)]
        page: usize,
        /// Clients a page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One connected client, with its subscriptions.
    Client {
        /// Its client id.
        client_id: String,
    },
    /// Close a client's connection (5.0: DISCONNECT 0x98 Administrative action).
    Kick {
        /// Its client id.
        client_id: String,
    },
    /// Sessions, connected or not.
    Sessions {
        /// Only client ids containing this.
        #[arg(long = "client-id")]
        client_id: Option<String>,
        /// The page (from 1).
        #[arg(long, default_value_t = 1)]
        page: usize,
        /// Sessions a page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// End a session (its client is kicked first if connected).
    Discard {
        /// Its client id.
        client_id: String,
    },
    /// Subscriptions.
    Subscriptions {
        /// Only client ids containing this.
        #[arg(long = "client-id")]
        client_id: Option<String>,
        /// Only filters containing this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Retained messages matching a topic filter.
    Retained {
        /// The topic filter.
        #[arg(default_value = "#")]
        filter: String,
        /// Delete the retained message of this topic instead.
        #[arg(long, value_name = "TOPIC", conflicts_with = "filter")]
        delete: Option<String>,
    },
    /// Publish a message from the broker itself.
    Publish {
        /// The topic.
        topic: String,
        /// The payload (UTF-8).
        message: String,
        /// QoS 0, 1 or 2.
        #[arg(short, long, default_value_t = 0)]
        qos: u8,
        /// Retain it.
        #[arg(short, long)]
        retain: bool,
    },
    /// The configuration in force, secrets redacted.
    Config,
    /// Drain the broker: refuse new connections and send the connected
    /// clients elsewhere (5.0: 0x9C Use another server, with the Server
    /// Reference); in a cluster their sessions follow them. `--status`
    /// only tells whether it is drained.
    Drain {
        /// Where 5.0 clients are sent (`host:port`; several,
        /// space-separated).
        #[arg(long = "server-reference", value_name = "HOST:PORT")]
        server_reference: Option<String>,
        /// Clients sent away a second (0: all at once).
        #[arg(long = "per-second", default_value_t = 0)]
        per_second: u32,
        /// Only show whether the broker is drained.
        #[arg(long, conflicts_with_all = ["server_reference", "per_second"])]
        status: bool,
    },
    /// Take connections again after `drain`.
    Undrain,
}

/// Percent-encode one path segment (RFC 3986 unreserved characters stay).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-encode a query value.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", segment(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

struct Api {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// What a request came back with.
enum Answer {
    Json(Value),
    Empty,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Answer, String> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut req = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(r) if r.status() == 204 => Ok(Answer::Empty),
            Ok(r) => r
                .into_json::<Value>()
                .map(Answer::Json)
                .map_err(|e| format!("{url}: not JSON: {e}")),
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or(body);
                let hint = if code == 401 {
                    " (give --token, set PETREL_TOKEN, or --data-dir where the broker wrote http.token)"
                } else {
                    ""
                };
                Err(format!("{code}: {message}{hint}"))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The token: given, or read from the data directory's `http.token`.
fn token(args: &AdminArgs) -> Option<String> {
    if let Some(t) = &args.token {
        return Some(t.clone());
    }
    let dir = args.data_dir.clone().or_else(super::default_data_dir)?;
    std::fs::read_to_string(dir.join(petrel_admin::TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_string())
}

pub(crate) fn run(args: CtlArgs) -> ExitCode {
    let api = args.admin.api(std::time::Duration::from_secs(10));
    match execute(&api, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petrel ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(api: &Api, args: &CtlArgs) -> Result<(), String> {
    let (method, path, body, columns): (&str, String, Option<Value>, &[&str]) = match &args.command
    {
        CtlCommand::Health => ("GET", "/healthz".into(), None, &[]),
        CtlCommand::Stats => ("GET", "/api/v1/stats".into(), None, &[]),
        CtlCommand::Clients {
            client_id,
            username,
            address,
            protocol,
            page,
            limit,
        } => (
            "GET",
            format!(
                "/api/v1/clients{}",
                query(&[
                    ("client_id", client_id.clone()),
                    ("username", username.clone()),
                    ("address", address.clone()),
                    ("protocol", protocol.clone()),
                    ("page", Some(page.to_string())),
                    ("limit", Some(limit.to_string())),
                ])
            ),
            None,
            &[
                "client_id",
                "username",
                "address",
                "protocol",
                "queue_depth",
                "inflight",
                "subscriptions",
            ],
        ),
        CtlCommand::Client { client_id } => (
            "GET",
            format!("/api/v1/clients/{}", segment(client_id)),
            None,
            &[],
        ),
        CtlCommand::Kick { client_id } => (
            "DELETE",
            format!("/api/v1/clients/{}", segment(client_id)),
            None,
            &[],
        ),
        CtlCommand::Sessions {
            client_id,
            page,
            limit,
        } => (
            "GET",
            format!(
                "/api/v1/sessions{}",
                query(&[
                    ("client_id", client_id.clone()),
                    ("page", Some(page.to_string())),
                    ("limit", Some(limit.to_string())),
                ])
            ),
            None,
            &[
                "client_id",
                "connected",
                "expiry_interval",
                "expires_in",
                "queue_depth",
                "subscriptions",
            ],
        ),
        CtlCommand::Discard { client_id } => (
            "DELETE",
            format!("/api/v1/sessions/{}", segment(client_id)),
            None,
            &[],
        ),
        CtlCommand::Subscriptions { client_id, filter } => (
            "GET",
            format!(
                "/api/v1/subscriptions{}",
                query(&[("client_id", client_id.clone()), ("filter", filter.clone()),])
            ),
            None,
            &["client_id", "filter", "qos", "no_local", "identifier"],
        ),
        CtlCommand::Retained {
            delete: Some(topic),
            ..
        } => {
            let path: Vec<String> = topic.split('/').map(segment).collect();
            (
                "DELETE",
                format!("/api/v1/retained/{}", path.join("/")),
                None,
                &[],
            )
        }
        CtlCommand::Retained { filter, .. } => (
            "GET",
            format!(
                "/api/v1/retained{}",
                query(&[("filter", Some(filter.clone()))])
            ),
            None,
            &["topic", "qos", "size", "payload"],
        ),
        CtlCommand::Publish {
            topic,
            message,
            qos,
            retain,
        } => (
            "POST",
            "/api/v1/publish".into(),
            Some(serde_json::json!({
                "topic": topic, "payload": message, "qos": qos, "retain": retain,
            })),
            &[],
        ),
        CtlCommand::Config => ("GET", "/api/v1/config".into(), None, &[]),
        CtlCommand::Drain { status: true, .. } => ("GET", "/api/v1/drain".into(), None, &[]),
        CtlCommand::Drain {
            server_reference,
            per_second,
            ..
        } => (
            "POST",
            "/api/v1/drain".into(),
            Some(serde_json::json!({
                "server_reference": server_reference, "per_second": per_second,
            })),
            &[],
        ),
        CtlCommand::Undrain => ("DELETE", "/api/v1/drain".into(), None, &[]),
    };
    match api.call(method, &path, body)? {
        Answer::Empty => println!("ok"),
        Answer::Json(v) if args.json || columns.is_empty() => {
            if matches!(args.command, CtlCommand::Health) {
                println!("{}", v["status"].as_str().unwrap_or("ok"));
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
                );
            }
        }
        Answer::Json(v) => print_table(&v, columns),
    }
    Ok(())
}

/// A list answer as aligned columns, with its total.
fn print_table(v: &Value, columns: &[&str]) {
    let rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|row| {
                    columns
                        .iter()
                        .map(|c| match &row[*c] {
                            Value::Null => "-".to_string(),
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(c.len())
                .min(60)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(*w).collect();
                format!("{c:<w$}")
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for r in rows {
        println!("{}", line(r));
    }
    let meta = &v["meta"];
    println!(
        "({} in all, page {}, {} a page)",
        meta["count"], meta["page"], meta["limit"]
    );
}
