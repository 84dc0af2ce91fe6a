//! Counters shared by every connection of one [`crate::StaticFiles`].

use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

/// A snapshot of the counters of one [`crate::StaticFiles`].
///
/// Counts cover the responses this crate produced; the few that hyper writes by itself
/// (400 for an unparsable request, 431 for an oversized head) are not seen here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Connections that entered [`crate::serve_connection`].
    pub connections: u64,
    /// Requests answered (every method, every status).
    pub requests: u64,
    /// Response body bytes handed to the connection (headers excluded). For an aborted response
    /// the last chunk may have been counted without reaching the client.
    pub bytes_sent: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    /// File responses whose connection ended before the whole body was sent: the client went
    /// away, or stopped reading for longer than the send timeout.
    pub aborted: u64,
}

/// The live counters behind [`ServeStats`]. Public so that other HTTP front-ends of the
/// back-end (the caching proxy) count connections, responses and bytes the same way.
#[derive(Debug, Default)]
pub struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes_sent: AtomicU64,
    by_class: [AtomicU64; 4],
    aborted: AtomicU64,
}

// Relaxed everywhere: the counters are independent statistics, read as a best-effort snapshot.
impl Counters {
    /// One connection entered service.
    pub fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// One response, by status class.
    pub fn add_response(&self, status: StatusCode) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = match status.as_u16() {
            200..=299 => Some(0),
            300..=399 => Some(1),
            400..=499 => Some(2),
            500..=599 => Some(3),
            _ => None,
        };
        if let Some(counter) = class.and_then(|i| self.by_class.get(i)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Response body bytes handed to the connection.
    pub fn add_body_bytes(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// A response whose body was cut short by the connection ending.
    pub fn add_aborted(&self) {
        self.aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> ServeStats {
        let [c2, c3, c4, c5] = &self.by_class;
        ServeStats {
            connections: self.connections.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            responses_2xx: c2.load(Ordering::Relaxed),
            responses_3xx: c3.load(Ordering::Relaxed),
            responses_4xx: c4.load(Ordering::Relaxed),
            responses_5xx: c5.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
        }
    }
}
