//! The state of an established TCP connection, as `TCP_REPAIR` dumps it on the
//! front-end and restores it on the back-end. Plain data: no syscalls here.

/// What `TCP_REPAIR_WINDOW` reads and writes (`struct tcp_repair_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// Everything the back-end needs to recreate the socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TcpState {
    /// `TCP_QUEUE_SEQ` of the send queue: the next sequence number to send.
    pub snd_seq: u32,
    /// `TCP_QUEUE_SEQ` of the receive queue: `rcv_nxt`, the next byte expected
    /// from the client. Bytes still unread are carried separately, so the
    /// restored queue starts at `rcv_seq - unread.len()`.
    pub rcv_seq: u32,
    /// The MSS clamp (`TCP_MAXSEG`).
    pub mss: u16,
    /// Window scaling was negotiated.
    pub wscale_ok: bool,
    /// Our send window scale (the client's advertised shift).
    pub snd_wscale: u8,
    /// Our receive window scale (the shift we advertised).
    pub rcv_wscale: u8,
    /// TCP timestamps were negotiated.
    pub timestamps_ok: bool,
    /// SACK was negotiated.
    pub sack_ok: bool,
    /// `TCP_TIMESTAMP` (ms clock) at the moment the state was sent.
    pub ts_val: u32,
    /// The window state.
    pub window: RepairWindow,
}
