/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * BTCP, the bottom half of Baton's TCP handoff: a tc ingress program on the
 * front's NIC that steers the packets of handed-off connections.
 *
 *   no FLOWS entry  -> TC_ACT_OK: the front's own kernel handles the packet,
 *                      except, when CONFIG guards the VIP, a packet to one of
 *                      its service ports that no local socket would take
 *                      (the kernel would answer it with a reset): dropped;
 *   PARK            -> copy the frame into the PARKED ring, TC_ACT_SHOT: the
 *                      front's socket is in repair mode and must not see it;
 *   FORWARD         -> Ethernet dst := back-end, src := front, redirect to the
 *                      egress of FLOWS.ifindex (the same L2 segment);
 *   FORWARD_CLOSING -> as FORWARD, except that a bare SYN deletes the entry
 *                      and passes (TC_ACT_OK): a new connection on a reused
 *                      4-tuple belongs to the front's listener.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
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

static __always_inline int is_service_port(const struct btcp_config *cfg, __be16 port)
{
	int i;

#pragma unroll
	for (i = 0; i < BTCP_MAX_SERVICE_PORTS; i++)
		if (cfg->ports[i] && cfg->ports[i] == port)
			return 1;
	return 0;
}

/*
 * Whether `sk`, a listener, would take this ACK for a connection whose
 * SYN-ACK carried a SYN cookie (the listener kept no request for it).
 * Copies of the headers on the stack: no pull, no packet pointers.
 */
static __always_inline int syncookie_ok(struct __sk_buff *skb, struct bpf_sock *sk)
{
	struct iphdr ip;
	struct tcphdr th;

	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)))
		return 0;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + ip.ihl * 4, &th, sizeof(th)))
		return 0;
	return bpf_tcp_check_syncookie(sk, &ip, sizeof(ip), &th, sizeof(th)) == 0;
}

/*
 * A packet that matches no FLOWS entry. Only the front's own flows and
 * flows it never saw get here. Unless CONFIG guards the VIP and this is one
 * of its service ports, it is the front's own traffic (control channels,
 * admin, other services): passed untouched. To a guarded port, the packet
 * passes only if a socket of this host takes it: an established, closing or
 * TIME_WAIT socket, a request socket (the handshake's last ACK while
 * TCP_DEFER_ACCEPT holds the request), or a listener for a bare SYN or an
 * ACK with a valid SYN cookie. Anything else the kernel would answer with a
 * reset (or refuse, for a SYN without a listener): it belongs to a flow
 * another front steers, or one this front has not learnt yet, or this
 * front's process is gone. Dropped, the client retransmits (through another
 * front once the routers move the flow) instead of losing the connection.
 * Runs only on misses: the hot path of FLOWS hits never gets here.
 */
static __always_inline int no_entry(struct __sk_buff *skb, const struct flow_key *key,
				    __u8 flags)
{
	struct bpf_sock_tuple tuple = {};
	struct btcp_config *cfg;
	struct bpf_sock *sk;
	__u32 zero = 0;
	__u32 state;

	cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	if (!cfg || !(cfg->flags & BTCP_CONFIG_DROP_UNKNOWN) || key->vip != cfg->vip ||
	    !is_service_port(cfg, key->vip_port)) {
		count(BTCP_STAT_PASSED);
		return TC_ACT_OK;
	}

	tuple.ipv4.saddr = key->client_ip;
	tuple.ipv4.daddr = key->vip;
	tuple.ipv4.sport = key->client_port;
	tuple.ipv4.dport = key->vip_port;
	/* skc: also finds request and TIME_WAIT sockets, which bpf_sk_lookup_tcp turns away. */
	sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		if ((flags & (BTCP_TCP_SYN | BTCP_TCP_ACK)) == BTCP_TCP_SYN)
			count(BTCP_STAT_NO_LISTENER_DROPPED);
		else
			count(BTCP_STAT_UNKNOWN_DROPPED);
		return TC_ACT_SHOT;
	}
	state = sk->state;
	if (state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		count(BTCP_STAT_PASSED);
		return TC_ACT_OK;
	}
	/* A listener: it opens a connection for a bare SYN (ECE/CWR are fine)... */
	if ((flags & (BTCP_TCP_SYN | BTCP_TCP_ACK | BTCP_TCP_RST | BTCP_TCP_FIN)) ==
	    BTCP_TCP_SYN) {
		bpf_sk_release(sk);
		count(BTCP_STAT_PASSED);
		return TC_ACT_OK;
	}
	/* ...and for an ACK only by its SYN cookie (syncookies keep working under a flood). */
	if ((flags & (BTCP_TCP_SYN | BTCP_TCP_ACK | BTCP_TCP_RST)) == BTCP_TCP_ACK &&
	    syncookie_ok(skb, sk)) {
		bpf_sk_release(sk);
		count(BTCP_STAT_SYNCOOKIE_PASSED);
		return TC_ACT_OK;
	}
	/* An ACK it does not know gets a reset; the rest it discards anyway. */
	bpf_sk_release(sk);
	count(BTCP_STAT_UNKNOWN_DROPPED);
	return TC_ACT_SHOT;
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
	if (!val)
		return no_entry(skb, &key, flags);

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
	 * listener discards it). ECE/CWR (an ECN SYN) are fine. The SYN then
	 * goes the way of any packet without an entry (no listener: dropped).
	 */
	if (val->action == BTCP_ACTION_FORWARD_CLOSING &&
	    (flags & (BTCP_TCP_SYN | BTCP_TCP_ACK | BTCP_TCP_RST | BTCP_TCP_FIN)) ==
		    BTCP_TCP_SYN) {
		bpf_map_delete_elem(&FLOWS, &key);
		count(BTCP_STAT_SYN_REPLACED);
		return no_entry(skb, &key, flags);
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
