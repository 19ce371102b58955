//! `/metrics`: the broker's figures in Prometheus's text format, gathered
//! from [`Broker::metrics`] at each scrape (nothing is counted twice: the
//! broker keeps its counters, this only writes them out).

use petrel_broker::{Broker, HistogramSnapshot, LATENCY_BOUNDS_US};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Writes the broker's metrics at each scrape.
#[derive(Debug)]
struct Collector(Broker);

/// Figures of the program's own that `/metrics` shows beside the broker's
/// (a cluster node's, for one): read at each scrape.
pub trait ExtraMetrics: Send + Sync + std::fmt::Debug + 'static {
    /// The metric families now.
    fn families(&self) -> Vec<Family>;
}

/// One metric family of [`ExtraMetrics`].
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// Its name (`petrel_cluster_routes`; a counter's without `_total`).
    pub name: String,
    /// What it counts.
    pub help: String,
    /// A counter (only goes up) or a gauge.
    pub counter: bool,
    /// Its samples: labels and value.
    pub samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// Writes the [`ExtraMetrics`] at each scrape.
#[derive(Debug)]
struct Extra(std::sync::Arc<dyn ExtraMetrics>);

impl prometheus_client::collector::Collector for Extra {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in self.0.families() {
            if f.counter {
                counter(&mut e, &f.name, &f.help, None, f.samples)?;
            } else {
                let samples = f
                    .samples
                    .into_iter()
                    .map(|(l, v)| (l, gauge_of(v)))
                    .collect();
                gauge(&mut e, &f.name, &f.help, None, samples)?;
            }
        }
        Ok(())
    }
}

/// The text of `/metrics` now.
pub(crate) fn render(broker: &Broker, extra: Option<&std::sync::Arc<dyn ExtraMetrics>>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collector(broker.clone())));
    if let Some(x) = extra {
        registry.register_collector(Box::new(Extra(x.clone())));
    }
    let mut out = String::new();
    // Writing to a String can't fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

type Labels<'a> = Vec<(&'static str, String)>;

/// One metric family: its samples, each with its labels.
fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: Vec<(Labels<'_>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, unit, kind)?;
    if samples.len() == 1 && samples[0].0.is_empty() {
        // One sample without labels: `name 3`, not `name{} 3`.
        if let Some((_, value)) = samples.into_iter().next() {
            value.encode(m)?;
        }
        return Ok(());
    }
    for (labels, value) in samples {
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels<'_>, u64)>,
) -> Result<(), std::fmt::Error> {
    let samples = samples
        .into_iter()
        .map(|(l, v)| (l, ConstCounter::new(v)))
        .collect();
    family(e, name, help, unit, MetricType::Counter, samples)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels<'_>, i64)>,
) -> Result<(), std::fmt::Error> {
    let samples = samples
        .into_iter()
        .map(|(l, v)| (l, ConstGauge::new(v)))
        .collect();
    family(e, name, help, unit, MetricType::Gauge, samples)
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    // Per bucket (the encoder writes them cumulative), the last one +Inf.
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let bound = LATENCY_BOUNDS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            (bound, *n)
        })
        .collect();
    m.encode_histogram::<Vec<(&str, String)>>(h.sum.as_secs_f64(), h.count, &buckets, None)
}

fn one<T>(v: T) -> Vec<(Labels<'static>, T)> {
    vec![(Vec::new(), v)]
}

fn gauge_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const QOS: [&str; 3] = ["0", "1", "2"];

fn by_qos(v: [u64; 3]) -> Vec<(Labels<'static>, u64)> {
    QOS.iter()
        .zip(v)
        .map(|(q, n)| (vec![("qos", (*q).to_string())], n))
        .collect()
}

/// A reason code as a label: `bad_user_name_or_password`.
fn reason_label(code: u8) -> String {
    let rc = petrel_codec::ReasonCode(code);
    match rc.name() {
        Some(name) => name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect(),
        None => format!("0x{code:02x}"),
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.0.metrics();
        let s = &m.stats;
        let e = &mut e;
        gauge(
            e,
            "petrel_connections",
            "Clients connected now, by listener and protocol version.",
            None,
            m.connections
                .iter()
                .map(|c| {
                    (
                        vec![
                            ("listener", c.listener.clone()),
                            ("protocol", c.protocol.version().to_string()),
                        ],
                        gauge_of(c.connected),
                    )
                })
                .collect(),
        )?;
        counter(
            e,
            "petrel_connacks",
            "CONNACKs sent, by reason (success: accepted).",
            None,
            m.connacks
                .iter()
                .map(|(code, n)| (vec![("reason", reason_label(*code))], *n))
                .collect(),
        )?;
        counter(
            e,
            "petrel_disconnects",
            "Connections of accepted clients that ended, by reason.",
            None,
            m.disconnects
                .iter()
                .map(|(r, n)| (vec![("reason", r.label().to_string())], *n))
                .collect(),
        )?;
        counter(
            e,
            "petrel_connections_refused",
            "Connections closed over max_connections, or refused at CONNECT.",
            None,
            one(s.connections_refused),
        )?;
        counter(
            e,
            "petrel_connections_throttled",
            "Connections refused by the per-address rate and caps, or the cap on unfinished CONNECTs.",
            None,
            one(s.connections_throttled),
        )?;
        counter(
            e,
            "petrel_messages_received",
            "PUBLISH packets received, by QoS.",
            None,
            by_qos(s.publish_received_by_qos),
        )?;
        counter(
            e,
            "petrel_messages_sent",
            "PUBLISH packets sent, by QoS.",
            None,
            by_qos(s.publish_sent_by_qos),
        )?;
        counter(
            e,
            "petrel_payload_received",
            "Payload bytes of the PUBLISH packets received, by QoS.",
            Some(&Unit::Bytes),
            by_qos(s.payload_bytes_received_by_qos),
        )?;
        counter(
            e,
            "petrel_payload_sent",
            "Payload bytes of the PUBLISH packets sent, by QoS.",
            Some(&Unit::Bytes),
            by_qos(s.payload_bytes_sent_by_qos),
        )?;
        counter(
            e,
            "petrel_packets_received",
            "MQTT control packets received.",
            None,
            one(s.messages_received),
        )?;
        counter(
            e,
            "petrel_packets_sent",
            "MQTT control packets sent.",
            None,
            one(s.messages_sent),
        )?;
        counter(
            e,
            "petrel_network_received",
            "Bytes read from clients.",
            Some(&Unit::Bytes),
            one(s.bytes_received),
        )?;
        counter(
            e,
            "petrel_network_sent",
            "Bytes written to clients.",
            Some(&Unit::Bytes),
            one(s.bytes_sent),
        )?;
        counter(
            e,
            "petrel_messages_dropped",
            "Messages dropped, by reason.",
            None,
            vec![
                (vec![("reason", "queue_full".into())], s.dropped_queue_full),
                (vec![("reason", "qos0_queue_full".into())], s.dropped_qos0),
                (vec![("reason", "expired".into())], s.dropped_expired),
                (vec![("reason", "too_large".into())], s.dropped_too_large),
                (vec![("reason", "store_full".into())], s.store_full),
            ],
        )?;
        gauge(
            e,
            "petrel_queued_messages",
            "Messages waiting in sessions' queues, over every session.",
            None,
            one(gauge_of(m.queued_messages)),
        )?;
        gauge(
            e,
            "petrel_queued",
            "Bytes of the messages waiting in sessions' queues.",
            Some(&Unit::Bytes),
            one(gauge_of(m.queued_bytes)),
        )?;
        gauge(
            e,
            "petrel_queue_depth_max",
            "The longest queue of one session, in messages.",
            None,
            one(gauge_of(m.max_queue_depth)),
        )?;
        gauge(
            e,
            "petrel_inflight_messages",
            "QoS 1/2 messages sent and not yet acknowledged, over every connection.",
            None,
            one(gauge_of(m.inflight)),
        )?;
        gauge(
            e,
            "petrel_retained_messages",
            "Retained messages stored.",
            None,
            one(gauge_of(s.retained)),
        )?;
        gauge(
            e,
            "petrel_retained",
            "Bytes the retained messages hold (topic, properties and payload).",
            Some(&Unit::Bytes),
            one(gauge_of(m.retained_bytes)),
        )?;
        gauge(
            e,
            "petrel_sessions",
            "Sessions, connected or not.",
            None,
            one(gauge_of(s.sessions)),
        )?;
        counter(
            e,
            "petrel_sessions_evicted",
            "Offline sessions ended to make room for new ones at max_sessions.",
            None,
            one(s.sessions_evicted),
        )?;
        gauge(
            e,
            "petrel_subscriptions",
            "Subscriptions held.",
            None,
            one(gauge_of(s.subscriptions)),
        )?;
        gauge(
            e,
            "petrel_subscriptions",
            "What the subscriptions are charged (estimated cost; see max_subscription_bytes).",
            Some(&Unit::Bytes),
            one(gauge_of(s.subscription_bytes)),
        )?;
        counter(
            e,
            "petrel_auth_successes",
            "Logins accepted by authentication.",
            None,
            one(s.auth_successes),
        )?;
        counter(
            e,
            "petrel_auth_failures",
            "Logins refused by authentication (bad or missing credentials, throttled).",
            None,
            one(s.auth_failures),
        )?;
        counter(
            e,
            "petrel_authorization_denied",
            "Actions refused by authorisation, by action.",
            None,
            vec![
                (vec![("action", "publish".into())], s.denied_publish),
                (vec![("action", "subscribe".into())], s.denied_subscribe),
                (vec![("action", "deliver".into())], s.denied_delivery),
            ],
        )?;
        gauge(
            e,
            "petrel_hibernating_connections",
            "Quiet connections hibernating now.",
            None,
            one(gauge_of(s.hibernating)),
        )?;
        counter(
            e,
            "petrel_hibernations",
            "Times a quiet connection went into hibernation.",
            None,
            one(s.hibernations),
        )?;
        histogram(
            e,
            "petrel_delivery_latency",
            "From a PUBLISH's arrival to a copy leaving for a subscriber, inside the broker.",
            &m.delivery_latency,
        )?;
        if let Some(h) = &m.store_write_latency {
            histogram(
                e,
                "petrel_store_write",
                "Writes of the durable store's journal to the operating system (and its syncs, with fsync durability).",
                h,
            )?;
        }
        gauge(
            e,
            "petrel_store",
            "Bytes the durable store's live entries take.",
            Some(&Unit::Bytes),
            one(gauge_of(m.store_bytes)),
        )?;
        counter(
            e,
            "petrel_store_errors",
            "Writes to the durable store that failed.",
            None,
            one(s.store_errors),
        )?;
        gauge(
            e,
            "petrel_uptime",
            "Seconds since the broker started.",
            Some(&Unit::Seconds),
            one(gauge_of(m.uptime.as_secs())),
        )?;
        if !m.bridges.is_empty() {
            let per = |f: fn(&petrel_broker::BridgeSnapshot) -> u64| -> Vec<(Labels<'_>, u64)> {
                m.bridges
                    .iter()
                    .map(|b| (vec![("bridge", b.name.clone())], f(b)))
                    .collect()
            };
            gauge(
                e,
                "petrel_bridge_up",
                "Whether the bridge is connected to its remote broker (1) or not (0).",
                None,
                per(|b| u64::from(b.up))
                    .into_iter()
                    .map(|(l, v)| (l, gauge_of(v)))
                    .collect(),
            )?;
            counter(
                e,
                "petrel_bridge_connects",
                "Connections the bridge made to its remote broker.",
                None,
                per(|b| b.connects),
            )?;
            counter(
                e,
                "petrel_bridge_connect_failures",
                "The bridge's failed attempts to connect (refused, unreachable, TLS).",
                None,
                per(|b| b.connect_failures),
            )?;
            counter(
                e,
                "petrel_bridge_messages",
                "Messages the bridge forwarded, by direction (out: to the remote).",
                None,
                m.bridges
                    .iter()
                    .flat_map(|b| {
                        [
                            (
                                vec![("bridge", b.name.clone()), ("direction", "out".into())],
                                b.forwarded_out,
                            ),
                            (
                                vec![("bridge", b.name.clone()), ("direction", "in".into())],
                                b.forwarded_in,
                            ),
                        ]
                    })
                    .collect(),
            )?;
            counter(
                e,
                "petrel_bridge_refused",
                "Forwarded messages the other side refused with an error reason code.",
                None,
                per(|b| b.refused),
            )?;
            gauge(
                e,
                "petrel_bridge_queued_messages",
                "Messages waiting for the remote broker.",
                None,
                per(|b| b.queued)
                    .into_iter()
                    .map(|(l, v)| (l, gauge_of(v)))
                    .collect(),
            )?;
            counter(
                e,
                "petrel_bridge_dropped",
                "Messages for the remote dropped because the bridge's queue was full.",
                None,
                per(|b| b.dropped),
            )?;
        }
        Ok(())
    }
}
