/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Header parsing: every packet access is checked against data_end. */
#ifndef BTCP_PARSE_H
#define BTCP_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"

#define BTCP_IP_MF 0x2000
#define BTCP_IP_OFFSET 0x1fff
/* TCP header up to and including the flags byte (offset 13). */
#define BTCP_L4_LEN 14
#define BTCP_TCP_FLAGS_OFF 13
#define BTCP_TCP_FIN 0x01
#define BTCP_TCP_SYN 0x02
#define BTCP_TCP_RST 0x04
#define BTCP_TCP_ACK 0x10

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IPV4_TCP,
	PARSE_FRAGMENT,
};

/*
 * Makes the first `len` bytes direct-accessible. GRO'd or paged skbs may keep
 * headers out of the linear area; pull only then, since a pull may copy.
 * Invalidates packet pointers: callers reload data/data_end afterwards.
 */
static __always_inline int ensure_linear(struct __sk_buff *skb, __u32 len)
{
	if ((long)skb->data + len <= (long)skb->data_end)
		return 0;
	if (len > skb->len)
		return -1;
	return bpf_skb_pull_data(skb, len) ? -1 : 0;
}

/*
 * Fills `key` from an Ethernet/IPv4/TCP frame (client -> VIP direction) and
 * `flags` with the TCP flags byte.
 */
static __always_inline enum parse_result parse_flow_key(struct __sk_buff *skb,
							struct flow_key *key, __u8 *flags)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u16 *ports;
	__u8 *l4;
	__u32 ihl_bytes;

	/* skb->protocol is already set by eth_type_trans(): skip the rest cheaply. */
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4_TCP;
	if (ensure_linear(skb, sizeof(*eth) + sizeof(*ip)))
		return PARSE_NOT_IPV4_TCP;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_IPV4_TCP;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4_TCP;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_NOT_IPV4_TCP;
	if (ip->version != 4 || ip->ihl < 5 || ip->protocol != IPPROTO_TCP)
		return PARSE_NOT_IPV4_TCP;
	if (ip->frag_off & bpf_htons(BTCP_IP_MF | BTCP_IP_OFFSET))
		return PARSE_FRAGMENT;

	key->client_ip = ip->saddr;
	key->vip = ip->daddr;
	ihl_bytes = ip->ihl * 4;

	if (ensure_linear(skb, sizeof(*eth) + ihl_bytes + BTCP_L4_LEN))
		return PARSE_NOT_IPV4_TCP;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	l4 = data + sizeof(*eth) + ihl_bytes;
	if ((void *)(l4 + BTCP_L4_LEN) > data_end)
		return PARSE_NOT_IPV4_TCP;
	ports = (__u16 *)l4;
	key->client_port = ports[0];
	key->vip_port = ports[1];
	*flags = l4[BTCP_TCP_FLAGS_OFF];
	return PARSE_OK;
}

#endif /* BTCP_PARSE_H */
