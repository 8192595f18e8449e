//! Counters for `GET /stats` (JSON) and `GET /metrics` (Prometheus text).

/// A count per small key (an HTTP status, a close code): few distinct keys, so a short list
/// beats a map and keeps a stable order.
#[derive(Debug, Default)]
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

    pub(super) fn get(&self, key: u16) -> u64 {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| *n)
    }
}

/// What the server has done since it started.
#[derive(Debug, Default)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
