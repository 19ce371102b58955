//! `$SYS` topics, named as Mosquitto names them, published retained at QoS 0
//! every `sys_interval` seconds.

use std::time::Instant;

use petrel_codec::TopicName;

use crate::stats::StatsSnapshot;

/// Moving averages of per-minute rates over 1, 5 and 15 minutes, as
/// Mosquitto's `$SYS/broker/load/...` topics report.
#[derive(Debug, Default, Clone, Copy)]
struct Load([f64; 3]);

impl Load {
    fn update(&mut self, per_minute: f64, interval_secs: f64) {
        for (avg, minutes) in self.0.iter_mut().zip([1.0, 5.0, 15.0]) {
            let k = (-interval_secs / (60.0 * minutes)).exp();
            *avg = *avg * k + per_minute * (1.0 - k);
        }
    }
}

const LOADS: [&str; 8] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "bytes/received",
    "bytes/sent",
    "connections",
    "publish/dropped",
];

fn load_inputs(s: &StatsSnapshot) -> [u64; 8] {
    [
        s.messages_received,
        s.messages_sent,
        s.publish_received,
        s.publish_sent,
        s.bytes_received,
        s.bytes_sent,
        s.connections_total,
        s.dropped_qos0 + s.dropped_queue_full + s.dropped_expired + s.dropped_too_large,
    ]
}

/// What `$SYS` says at each tick.
#[derive(Debug)]
pub(super) struct SysPublisher {
    last: Option<(Instant, [u64; 8])>,
    loads: [Load; 8],
}

impl SysPublisher {
    pub(super) fn new() -> Self {
        Self {
            last: None,
            loads: [Load::default(); 8],
        }
    }

    /// The topics and values to publish now, given the counters and when
    /// the broker started.
    pub(super) fn tick(
        &mut self,
        s: &StatsSnapshot,
        started: Instant,
        now: Instant,
    ) -> Vec<(TopicName, String)> {
        let mut out = Vec::new();
        let inputs = load_inputs(s);
        if let Some((at, before)) = self.last {
            let secs = now.saturating_duration_since(at).as_secs_f64().max(0.001);
            for ((load, now_v), before_v) in self.loads.iter_mut().zip(inputs).zip(before) {
                let per_minute = now_v.saturating_sub(before_v) as f64 * 60.0 / secs;
                load.update(per_minute, secs);
            }
        }
        self.last = Some((now, inputs));

        let mut publish = |topic: String, value: String| {
            if let Ok(t) = TopicName::try_from(topic.as_str()) {
                out.push((t, value));
            }
        };
        let b = "$SYS/broker";
        publish(
            format!("{b}/version"),
            format!("petrel {}", env!("CARGO_PKG_VERSION")),
        );
        publish(
            format!("{b}/uptime"),
            format!(
                "{} seconds",
                now.saturating_duration_since(started).as_secs()
            ),
        );
        let disconnected = s.sessions.saturating_sub(s.clients_connected);
        for (name, value) in [
            ("clients/connected", s.clients_connected),
            ("clients/active", s.clients_connected),
            ("clients/disconnected", disconnected),
            ("clients/inactive", disconnected),
            ("clients/total", s.sessions.max(s.clients_connected)),
            ("clients/maximum", s.clients_maximum),
            ("clients/hibernating", s.hibernating),
            ("messages/received", s.messages_received),
            ("messages/sent", s.messages_sent),
            ("publish/messages/received", s.publish_received),
            ("publish/messages/sent", s.publish_sent),
            (
                "publish/messages/dropped",
                s.dropped_qos0 + s.dropped_queue_full + s.dropped_expired + s.dropped_too_large,
            ),
            ("bytes/received", s.bytes_received),
            ("bytes/sent", s.bytes_sent),
            ("subscriptions/count", s.subscriptions),
            ("retained messages/count", s.retained),
        ] {
            publish(format!("{b}/{name}"), value.to_string());
        }
        for (name, load) in LOADS.iter().zip(self.loads) {
            for (window, v) in ["1min", "5min", "15min"].iter().zip(load.0) {
                publish(format!("{b}/load/{name}/{window}"), format!("{v:.2}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Load;

    #[test]
    fn a_steady_rate_converges_and_the_short_window_moves_first() {
        let mut l = Load::default();
        for _ in 0..6 {
            l.update(600.0, 10.0);
        }
        // One minute at 600/min: the 1-minute average is most of the way there.
        assert!(l.0[0] > 300.0 && l.0[0] < 600.0, "{:?}", l.0);
        assert!(l.0[0] > l.0[1] && l.0[1] > l.0[2]);
        for _ in 0..600 {
            l.update(600.0, 10.0);
        }
        assert!((l.0[2] - 600.0).abs() < 1.0);
    }
}
