/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * BTCP, the bottom half of Baton's TCP handoff: a tc ingress program on the
 * front's NIC that steers the packets of handed-off connections.
 *
 *   no FLOWS entry  -> TC_ACT_OK: the front's own kernel handles the packet;
 *   PARK            -> copy the frame into the PARKED ring, TC_ACT_SHOT: the
 *                      front's socket is in repair mode and must not see it;
 *   FORWARD         -> Ethernet dst := back-end, src := front, redirect to the
 *                      egress of FLOWS.ifindex (the same L2 segment);
 *   FORWARD_CLOSING -> as FORWARD, except that a bare SYN deletes the entry
 *                      and passes (TC_ACT_OK): a new connection on a reused
 *                      4-tuple belongs to the front's listener.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"
#include "maps.h"
#include "parse.h"

#define BTCP_MACS_LEN 12

static __always_inline void count(__u32 index)
{
	__u64 *counter = bpf_map_lookup_elem(&STATS, &index);

	if (counter)
		*counter += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline void touch(struct flow_val *val, __u64 bytes)
{
	val->last_seen_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&val->packets, 1);
	__sync_fetch_and_add(&val->bytes, bytes);
}

/* Returns 0 if the whole frame went into the ring. */
static __always_inline int park(struct __sk_buff *skb, const struct flow_key *key)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct park_scratch *scratch;
	__u32 len = skb->len;

	scratch = bpf_map_lookup_elem(&SCRATCH, &cpu);
	if (!scratch)
		return -1;
	/* Also bounds `len` for the verifier: 1..BTCP_PARK_MAX_FRAME. */
	if (len == 0 || len > BTCP_PARK_MAX_FRAME)
		return -1;
	scratch->hdr.key = *key;
	scratch->hdr.len = len;
	scratch->hdr.orig_len = len;
	/* Works for paged skbs too, without pulling them linear. */
	if (bpf_skb_load_bytes(skb, 0, scratch->frame, len))
		return -1;
	/*
	 * A copy into a right-sized record: a fixed-size reservation would
	 * have to be 64 KiB for every 66-byte ACK and fill the ring 1000x faster.
	 */
	if (bpf_ringbuf_output(&PARKED, scratch, sizeof(scratch->hdr) + len, 0))
		return -1;
	return 0;
}

static __always_inline int forward(struct __sk_buff *skb, const struct flow_val *val)
{
	__u8 macs[BTCP_MACS_LEN];

	__builtin_memcpy(macs, val->dst_mac, 6);
	__builtin_memcpy(macs + 6, val->src_mac, 6);
	/*
	 * bpf_skb_store_bytes instead of a direct write: a program with direct
	 * packet writes gets an unclone prologue run on every packet, also on
	 * those it only passes.
	 */
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		return -1;
	return 0;
}

SEC("classifier")
int btcp_ingress(struct __sk_buff *skb)
{
	struct flow_key key = {};
	struct flow_val *val;
	__u8 flags = 0;
	__u32 len;

	switch (parse_flow_key(skb, &key, &flags)) {
	case PARSE_OK:
		break;
	case PARSE_FRAGMENT:
		count(BTCP_STAT_FRAGMENT);
		return TC_ACT_OK;
	default:
		count(BTCP_STAT_NOT_IPV4_TCP);
		return TC_ACT_OK;
	}

	val = bpf_map_lookup_elem(&FLOWS, &key);
	if (!val) {
		count(BTCP_STAT_PASSED);
		return TC_ACT_OK;
	}

	/*
	 * A SYN without ACK opens a new connection that reuses the 4-tuple of a
	 * handed-off one (a client port freed early; entries outlive the close by
	 * a grace period). It belongs to the front's listener, not to the old
	 * back-end: forget the old flow and let the front's kernel have it.
	 * Only once the back-end has reported the close (FORWARD_CLOSING): on a
	 * live flow a bare SYN is a duplicate or a blind spoof, and deleting the
	 * entry would let the front's kernel reset the connection. Forwarded, the
	 * back-end's socket answers it with a challenge ACK. Parked flows keep it
	 * like any other segment. With RST or FIN as well it opens nothing (a
	 * listener discards it). ECE/CWR (an ECN SYN) are fine.
	 */
	if (val->action == BTCP_ACTION_FORWARD_CLOSING &&
	    (flags & (BTCP_TCP_SYN | BTCP_TCP_ACK | BTCP_TCP_RST | BTCP_TCP_FIN)) ==
		    BTCP_TCP_SYN) {
		bpf_map_delete_elem(&FLOWS, &key);
		count(BTCP_STAT_SYN_REPLACED);
		return TC_ACT_OK;
	}

	len = skb->len;
	switch (val->action) {
	case BTCP_ACTION_PARK:
		touch(val, len);
		if (park(skb, &key))
			count(BTCP_STAT_PARK_LOST);
		else
			count(BTCP_STAT_PARKED);
		/* Dropped even when lost: the client retransmits, the front must not answer. */
		return TC_ACT_SHOT;
	case BTCP_ACTION_FORWARD:
	case BTCP_ACTION_FORWARD_CLOSING:
		touch(val, len);
		if (forward(skb, val)) {
			count(BTCP_STAT_ERROR);
			return TC_ACT_SHOT;
		}
		count(BTCP_STAT_FORWARDED);
		return bpf_redirect(val->ifindex, 0);
	default:
		count(BTCP_STAT_ERROR);
		return TC_ACT_OK;
	}
}

char _license[] SEC("license") = "Dual MIT/GPL";
