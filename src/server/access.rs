//! The access log: one `info` line per HTTP request and per finished WebSocket session, under
//! the target `wsloop::access`, with the fields as key-values (`--log-format json` shows them).

use super::*;
use crate::logging::{AccessLog, ACCESS};

/// A request head being answered.
pub(super) struct Request {
    method: Box<str>,
    target: Box<str>,
    /// Head and body bytes.
    pub(super) bytes_in: u64,
}

impl Server {
    fn access_on(&self) -> bool {
        self.config.access_log == AccessLog::On
            && log::log_enabled!(target: ACCESS, log::Level::Info)
    }

    /// A request head of `len` bytes was parsed on this connection.
    pub(super) fn begin_request(&mut self, key: usize, head: &Head<'_>, len: usize) {
        if !self.access_on() {
            return;
        }
        if let Phase::Http(state) = &mut self.clients[key].phase {
            state.request = Some(Request {
                method: head.method.into(),
                target: head.target.into(),
                bytes_in: len as u64,
            });
        }
    }

    /// An answer (or refusal) with `status` and `bytes_out` bytes was queued.
    pub(super) fn access_http(&mut self, key: usize, status: u16, bytes_out: usize) {
        if !self.access_on() {
            return;
        }
        let client = &mut self.clients[key];
        let Phase::Http(state) = &mut client.phase else {
            return;
        };
        let r = state.request.take();
        let (method, target, bytes_in) = match &r {
            Some(r) => (&*r.method, &*r.target, r.bytes_in),
            None => ("-", "-", 0),
        };
        let duration_ms = self
            .now
            .saturating_duration_since(state.started)
            .as_millis() as u64;
        let peer = client.peer;
        info!(
            target: ACCESS,
            peer:% = peer, method, path = target, status, duration_ms, bytes_in, bytes_out;
            "{peer} \"{method} {target}\" {status} {duration_ms}ms in={bytes_in} out={bytes_out}"
        );
    }

    /// A WebSocket session is over: its path, close code (1006 when none was sent, as
    /// RFC 6455 §7.1.5 names a connection closed without one), length and traffic.
    pub(super) fn access_websocket(&self, peer: SocketAddr, traffic: (u64, u64), ws: &WebSocket) {
        if !self.access_on() {
            return;
        }
        let (bytes_in, bytes_out) = traffic;
        let close_code = ws.conn.close_sent().unwrap_or(1006);
        let duration_ms = self.since_start_ms().saturating_sub(ws.opened_ms);
        let path = &*ws.path(&self.config);
        info!(
            target: ACCESS,
            peer:% = peer, method = "GET", path, websocket = true, close_code, duration_ms, bytes_in, bytes_out;
            "{peer} \"WebSocket {path}\" {close_code} {duration_ms}ms in={bytes_in} out={bytes_out}"
        );
    }
}
