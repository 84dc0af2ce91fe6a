/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The one ABI header shared by the BPF program and the Rust loader.
 *
 * Every struct here crosses the kernel/user boundary as raw bytes, so its
 * layout is pinned: explicit padding, sizes asserted below and again in
 * src/abi.rs. build.rs turns every `#define BTCP_<NAME> <integer>` line of
 * this file into a Rust `pub const <NAME>: u32`, so constants cannot drift;
 * keep those defines on one line each with a plain decimal or hex value.
 */
#ifndef BTCP_ABI_H
#define BTCP_ABI_H

#include <linux/types.h>

/*
 * The version of everything pinned on a bpffs (the maps' layouts and the
 * meaning of their values): the loader pins under a directory named
 * v<version>, and refuses to start beside the pins of another version.
 * Bump it on any change to flow_key, flow_val, parked_hdr or a map's type,
 * size or index meaning. v2: STATS grew from 8 to 11 counters.
 */
#define BTCP_ABI_VERSION 2

/* flow_val.action */
#define BTCP_ACTION_PARK 1
#define BTCP_ACTION_FORWARD 2
/* Forwards like FORWARD; the back-end reported the close, so a bare SYN may reuse the 4-tuple. */
#define BTCP_ACTION_FORWARD_CLOSING 3

/* Map sizes. */
#define BTCP_MAX_FLOWS 65536
/* Must be a power of two and a multiple of the page size. */
#define BTCP_RING_BYTES 4194304
/* The largest frame that can be parked: a legacy-GRO/GSO super-frame. */
#define BTCP_PARK_MAX_FRAME 65536

/*
 * Indices of the per-CPU STATS array. Every IPv4/TCP frame counts once in
 * one verdict counter; SYN_REPLACED counts an event (the frame itself then
 * counts as one without an entry).
 */
#define BTCP_STAT_PASSED 0       /* IPv4/TCP, no map entry: left to the front's kernel */
#define BTCP_STAT_FORWARDED 1    /* redirected to a back-end */
#define BTCP_STAT_PARKED 2       /* copied into the PARKED ring and dropped */
#define BTCP_STAT_PARK_LOST 3    /* parked flow, frame dropped without a copy (ring full, too big) */
#define BTCP_STAT_NOT_IPV4_TCP 4 /* not an Ethernet/IPv4/TCP frame, or truncated: passed */
#define BTCP_STAT_FRAGMENT 5     /* IPv4 fragment (no reliable ports): passed */
#define BTCP_STAT_ERROR 6        /* helper failure or unknown action in the map */
#define BTCP_STAT_SYN_REPLACED 7 /* a new SYN reused a closing 4-tuple: entry deleted */
/* To a guarded service port, no entry, no socket that takes it: dropped, not reset. */
#define BTCP_STAT_UNKNOWN_DROPPED 8
/* A SYN to a guarded service port with no socket at all (no listener): dropped, not refused. */
#define BTCP_STAT_NO_LISTENER_DROPPED 9
/* An ACK to a guarded service port that a listener takes by its SYN cookie: passed. */
#define BTCP_STAT_SYNCOOKIE_PASSED 10
#define BTCP_STAT_COUNT 11

/* Service ports of the VIP the program guards (struct btcp_config). */
#define BTCP_MAX_SERVICE_PORTS 4
/* btcp_config.flags: drop what no socket of this host takes (else pass it). */
#define BTCP_CONFIG_DROP_UNKNOWN 1

/* Sizes, asserted on both sides. */
#define BTCP_SIZEOF_FLOW_KEY 12
#define BTCP_SIZEOF_FLOW_VAL 56
#define BTCP_SIZEOF_PARKED_HDR 20
#define BTCP_SIZEOF_CONFIG 16

/*
 * Key of the FLOWS map, in network byte order, as seen in a client's packet:
 * saddr/sport are the client, daddr/dport the VIP.
 */
struct flow_key {
	__be32 client_ip;
	__be32 vip;
	__be16 client_port;
	__be16 vip_port;
};

/*
 * Value of the FLOWS map. User space writes action/ifindex/MACs and the
 * owner, BPF the counters. The owner (back-end address and handoff id) is
 * not used by the program: it lets a restarted front rebuild its view of
 * the flows from the pinned map alone.
 */
struct flow_val {
	__u32 action;     /* BTCP_ACTION_* */
	__u32 ifindex;    /* FORWARD: egress device */
	__u8 dst_mac[6];  /* FORWARD: the back-end's MAC */
	__u8 src_mac[6];  /* FORWARD: the front's MAC */
	__be32 backend_ip; /* the back-end that serves (or is offered) the flow */
	__u64 last_seen_ns; /* bpf_ktime_get_ns() of the last packet (CLOCK_MONOTONIC) */
	__u64 packets;
	__u64 bytes;
	__u64 handoff_id; /* the front's id of the handoff, as on the control channel */
};

/* One record of the PARKED ring buffer: this header, then `len` frame bytes. */
struct parked_hdr {
	struct flow_key key;
	__u32 len;      /* bytes of frame that follow */
	__u32 orig_len; /* skb->len when the frame arrived */
};

/*
 * The only element of the CONFIG array, written by the loader before the
 * program is attached and again by a reload. In network byte order.
 * With vip 0 or no BTCP_CONFIG_DROP_UNKNOWN, every packet without a FLOWS
 * entry passes (the front's kernel resets what it does not know).
 */
struct btcp_config {
	__be32 vip;
	__u32 flags;                          /* BTCP_CONFIG_* */
	__be16 ports[BTCP_MAX_SERVICE_PORTS]; /* 0: an unused slot */
};

_Static_assert(sizeof(struct flow_key) == BTCP_SIZEOF_FLOW_KEY, "flow_key size");
_Static_assert(sizeof(struct flow_val) == BTCP_SIZEOF_FLOW_VAL, "flow_val size");
_Static_assert(__builtin_offsetof(struct flow_val, dst_mac) == 8, "flow_val.dst_mac");
_Static_assert(__builtin_offsetof(struct flow_val, src_mac) == 14, "flow_val.src_mac");
_Static_assert(__builtin_offsetof(struct flow_val, backend_ip) == 20, "flow_val.backend_ip");
_Static_assert(__builtin_offsetof(struct flow_val, last_seen_ns) == 24, "flow_val.last_seen_ns");
_Static_assert(__builtin_offsetof(struct flow_val, handoff_id) == 48, "flow_val.handoff_id");
_Static_assert(sizeof(struct parked_hdr) == BTCP_SIZEOF_PARKED_HDR, "parked_hdr size");
_Static_assert(sizeof(struct btcp_config) == BTCP_SIZEOF_CONFIG, "btcp_config size");
_Static_assert(__builtin_offsetof(struct btcp_config, ports) == 8, "btcp_config.ports");
_Static_assert(BTCP_STAT_SYNCOOKIE_PASSED + 1 == BTCP_STAT_COUNT, "stats indices are dense");

#endif /* BTCP_ABI_H */
