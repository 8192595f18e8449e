//! Counters for `GET /stats` (JSON) and `GET /metrics` (Prometheus text).

/// A count per small key (an HTTP status, a close code): few distinct keys, so a short list
/// beats a map and keeps a stable order.
#[derive(Clone, Debug, Default)]
pub(super) struct Counts(Vec<(u16, u64)>);

impl Counts {
    pub(super) fn add(&mut self, key: u16) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => {
                self.0.push((key, 1));
                self.0.sort_unstable();
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.0.iter().copied()
    }

    /// Adds another worker's counts to these.
    pub(super) fn add_all(&mut self, other: &Counts) {
        for (key, n) in other.iter() {
            match self.0.iter_mut().find(|(k, _)| *k == key) {
                Some((_, m)) => *m += n,
                None => {
                    self.0.push((key, n));
                    self.0.sort_unstable();
                }
            }
        }
    }

    #[allow(dead_code)] // for the tests, and counters others may read
    pub(super) fn get(&self, key: u16) -> u64 {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| *n)
    }
}

/// What the server has done since it started.
#[derive(Clone, Debug, Default)]
pub(super) struct Stats {
    pub(super) messages_in: u64,
    pub(super) bytes_in: u64,
    pub(super) messages_out: u64,
    pub(super) bytes_out: u64,
    /// Requests and upgrades refused, by HTTP status.
    pub(super) refused: Counts,
    /// WebSocket close frames sent, by close code.
    pub(super) closes: Counts,
    /// Slow consumers closed with 1008 (`--slow-consumer close`).
    pub(super) slow_closed: u64,
    /// Fan-out messages skipped for a slow consumer (`--slow-consumer drop`).
    pub(super) slow_dropped: u64,
    /// Peers dropped for not answering a ping in time.
    pub(super) ping_timeouts: u64,
    /// Connections dropped because their output made no progress.
    pub(super) send_timeouts: u64,
    /// `accept(2)` failures (descriptors running out and the like).
    pub(super) accept_errors: u64,
    /// Console lines dropped because stdout was not keeping up.
    pub(super) console_dropped: u64,
}

impl Stats {
    /// Adds another worker's counters to these (`--workers`: `/stats` shows the sums).
    pub(super) fn add(&mut self, o: &Stats) {
        self.messages_in += o.messages_in;
        self.bytes_in += o.bytes_in;
        self.messages_out += o.messages_out;
        self.bytes_out += o.bytes_out;
        self.refused.add_all(&o.refused);
        self.closes.add_all(&o.closes);
        self.slow_closed += o.slow_closed;
        self.slow_dropped += o.slow_dropped;
        self.ping_timeouts += o.ping_timeouts;
        self.send_timeouts += o.send_timeouts;
        self.accept_errors += o.accept_errors;
        self.console_dropped += o.console_dropped;
    }
}

/// What is there right now (as opposed to [`Stats`], what has happened).
#[derive(Clone, Debug, Default)]
pub(super) struct Gauges {
    /// Connections still speaking HTTP (before an upgrade, or plain requests).
    pub(super) http: usize,
    /// Open WebSockets.
    pub(super) websocket: usize,
    /// WebSockets in their closing handshake, and connections waiting for the peer's FIN.
    pub(super) closing: usize,
    pub(super) rooms: usize,
    /// `--exec` programs running (attached, or ending).
    pub(super) children: usize,
    pub(super) uptime_s: u64,
}

impl Gauges {
    /// Adds another worker's gauges (the uptime is the process's, the same for all).
    pub(super) fn add(&mut self, o: &Gauges) {
        self.http += o.http;
        self.websocket += o.websocket;
        self.closing += o.closing;
        self.rooms += o.rooms;
        self.children += o.children;
    }
}

/// The Prometheus text exposition format, version 0.0.4.
pub(super) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes the metrics in the Prometheus text format (0.0.4): a `# HELP` and `# TYPE` line
/// per family, then one `name{labels} value` line per series; counters end in `_total`.
pub(super) fn prometheus(g: &Gauges, s: &Stats, out: &mut String) {
    use std::fmt::Write as _;
    let mut family = |name: &str, kind: &str, help: &str, series: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in series {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "wsloop_connections",
        "gauge",
        "Connections open, by kind.",
        &[
            ("{kind=\"http\"}", g.http as u64),
            ("{kind=\"websocket\"}", g.websocket as u64),
            ("{kind=\"closing\"}", g.closing as u64),
        ],
    );
    family(
        "wsloop_rooms",
        "gauge",
        "Rooms with members.",
        &[("", g.rooms as u64)],
    );
    let children = [("", g.children as u64)];
    family(
        "wsloop_programs",
        "gauge",
        "--exec programs running.",
        &children,
    );
    let counters: [(&str, &str, u64); 8] = [
        (
            "wsloop_messages_in_total",
            "WebSocket messages received.",
            s.messages_in,
        ),
        (
            "wsloop_bytes_in_total",
            "Payload bytes received.",
            s.bytes_in,
        ),
        (
            "wsloop_messages_out_total",
            "WebSocket messages queued to send.",
            s.messages_out,
        ),
        (
            "wsloop_bytes_out_total",
            "Payload bytes queued to send.",
            s.bytes_out,
        ),
        (
            "wsloop_ping_timeouts_total",
            "Peers dropped for not answering a ping.",
            s.ping_timeouts,
        ),
        (
            "wsloop_send_timeouts_total",
            "Connections dropped: output made no progress.",
            s.send_timeouts,
        ),
        (
            "wsloop_accept_errors_total",
            "accept(2) failures.",
            s.accept_errors,
        ),
        (
            "wsloop_console_dropped_total",
            "Console lines dropped: stdout was full.",
            s.console_dropped,
        ),
    ];
    for (name, help, value) in counters {
        family(name, "counter", help, &[("", value)]);
    }
    family(
        "wsloop_slow_consumers_total",
        "counter",
        "Fan-out past --max-backlog: receivers closed, or messages dropped.",
        &[
            ("{action=\"close\"}", s.slow_closed),
            ("{action=\"drop\"}", s.slow_dropped),
        ],
    );
    let labelled = |key: &str, counts: &Counts| -> Vec<(String, u64)> {
        counts
            .iter()
            .map(|(k, n)| (format!("{{{key}=\"{k}\"}}"), n))
            .collect()
    };
    let refused = labelled("status", &s.refused);
    let closes = labelled("code", &s.closes);
    family(
        "wsloop_refused_total",
        "counter",
        "Requests and upgrades refused, by HTTP status.",
        &series(&refused),
    );
    family(
        "wsloop_closes_total",
        "counter",
        "WebSocket close frames sent, by close code (1005: an empty close).",
        &series(&closes),
    );
    family(
        "wsloop_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        &[("", g.uptime_s)],
    );
}

/// `--workers`: each worker's figures as their own families with a `worker` label (kept
/// apart from the totals above, so that summing a family never counts anything twice).
pub(super) fn prometheus_workers(all: &[(super::workers::Snapshot, u64)], out: &mut String) {
    use std::fmt::Write as _;
    type Field = fn(&super::workers::Snapshot, u64) -> u64;
    let families: [(&str, &str, &str, Field); 5] = [
        (
            "wsloop_worker_connections",
            "gauge",
            "Connections open on each worker.",
            |w, _| w.connections as u64,
        ),
        (
            "wsloop_worker_messages_in_total",
            "counter",
            "WebSocket messages received by each worker.",
            |w, _| w.stats.messages_in,
        ),
        (
            "wsloop_worker_messages_out_total",
            "counter",
            "WebSocket messages queued to send by each worker.",
            |w, _| w.stats.messages_out,
        ),
        (
            "wsloop_worker_room_replicas",
            "gauge",
            "Rooms with members on another worker, counted per other worker.",
            |w, _| w.replicas as u64,
        ),
        (
            "wsloop_worker_inbox_dropped_total",
            "counter",
            "Room messages from other workers dropped: the worker's inbox was full.",
            |_, dropped| dropped,
        ),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (i, (w, dropped)) in all.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", field(w, *dropped));
        }
    }
}

fn series(v: &[(String, u64)]) -> Vec<(&str, u64)> {
    v.iter().map(|(l, n)| (l.as_str(), *n)).collect()
}

/// `{"403":2,"503":1}`: a count per key as a JSON object.
pub(super) fn json_counts(counts: &Counts) -> String {
    let mut out = String::from("{");
    for (i, (k, n)) in counts.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        out.push_str(&format!("{sep}\"{k}\":{n}"));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_the_text_format_line_by_line() {
        let mut s = Stats {
            messages_in: 3,
            slow_closed: 1,
            ..Stats::default()
        };
        s.refused.add(503);
        s.refused.add(403);
        s.refused.add(503);
        s.closes.add(1008);
        let g = Gauges {
            http: 1,
            websocket: 2,
            rooms: 1,
            uptime_s: 7,
            ..Gauges::default()
        };
        let mut out = String::new();
        prometheus(&g, &s, &mut out);
        // `--workers`: the per-worker families follow the same format.
        let workers = [
            (crate::server::workers::Snapshot::default(), 0),
            (crate::server::workers::Snapshot::default(), 3),
        ];
        prometheus_workers(&workers, &mut out);
        assert!(out.ends_with('\n'));
        let mut described = Vec::new();
        let mut typed = Vec::new();
        let mut series = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(!help.is_empty(), "{line}");
                described.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert_eq!(
                    described.last().map(String::as_str),
                    Some(name),
                    "HELP first"
                );
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                typed.push(name.to_string());
            } else {
                let (series_name, value) = line.rsplit_once(' ').unwrap();
                value.parse::<f64>().unwrap();
                let name = series_name.split('{').next().unwrap();
                assert!(name.starts_with("wsloop_"), "{line}");
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert_eq!(typed.last().map(String::as_str), Some(name), "{line}");
                if let Some(labels) = series_name.strip_prefix(name) {
                    if !labels.is_empty() {
                        assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                        let (k, v) = labels[1..labels.len() - 1].split_once('=').unwrap();
                        assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'));
                    }
                }
                series.push(line.to_string());
            }
        }
        let has = |l: &str| series.iter().any(|s| s == l);
        assert!(has("wsloop_connections{kind=\"websocket\"} 2"));
        assert!(has("wsloop_messages_in_total 3"));
        assert!(has("wsloop_refused_total{status=\"403\"} 1"));
        assert!(has("wsloop_refused_total{status=\"503\"} 2"));
        assert!(has("wsloop_closes_total{code=\"1008\"} 1"));
        assert!(has("wsloop_slow_consumers_total{action=\"close\"} 1"));
        assert!(has("wsloop_slow_consumers_total{action=\"drop\"} 0"));
        assert!(has("wsloop_uptime_seconds 7"));
        assert!(has("wsloop_worker_inbox_dropped_total{worker=\"1\"} 3"));
        assert!(has("wsloop_worker_connections{worker=\"0\"} 0"));
        // Every family once.
        let mut unique = typed.clone();
        unique.dedup();
        assert_eq!(unique, typed);
    }

    #[test]
    fn counts_as_json() {
        let mut c = Counts::default();
        assert_eq!(json_counts(&c), "{}");
        c.add(503);
        c.add(403);
        assert_eq!(json_counts(&c), r#"{"403":1,"503":1}"#);
    }

    #[test]
    fn counts_per_key_in_order() {
        let mut c = Counts::default();
        c.add(503);
        c.add(400);
        c.add(503);
        assert_eq!(c.iter().collect::<Vec<_>>(), vec![(400, 1), (503, 2)]);
        assert_eq!(c.get(503), 2);
        assert_eq!(c.get(404), 0);
    }
}
