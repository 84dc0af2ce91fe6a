//! The identity of a handed-off connection.

use std::fmt;
use std::net::SocketAddrV4;

/// A TCP connection as the front-end sees it: the client's address and the
/// virtual address (VIP and port) it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The client's address and port.
    pub client: SocketAddrV4,
    /// The virtual IP and port the client connected to.
    pub vip: SocketAddrV4,
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.client, self.vip)
    }
}
