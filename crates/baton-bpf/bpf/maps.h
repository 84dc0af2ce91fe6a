/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The forwarder's maps. Names are what the Rust loader looks up. */
#ifndef BTCP_MAPS_H
#define BTCP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"

/* build.rs compiles the program twice, once with BTCP_PINNED. */
#ifdef BTCP_PINNED
#define BTCP_PIN __uint(pinning, LIBBPF_PIN_BY_NAME);
#else
#define BTCP_PIN
#endif

/*
 * FLOWS and STATS are pinned by name when the loader is given a pin
 * directory: they outlive the front's process, so a restarted front adopts
 * the flows (and the counters). PARKED, SCRATCH and CONFIG are per program and never
 * pinned: aya 0.13 cannot reopen a ring whose positions are not 0 (its
 * reader starts with a producer position of 0 and reads stale records as
 * new ones), so frames parked just before a restart are lost and their
 * clients retransmit them.
 *
 * Written per handoff from user space, read per packet. No preallocation:
 * 65536 idle elements would pin ~6 MiB, and a replaced element stays valid
 * for a program still holding it until the RCU grace period ends.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BTCP_MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	BTCP_PIN
} FLOWS SEC(".maps");

/* Frames of parked flows, for the front to re-send once the flow forwards. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BTCP_RING_BYTES);
} PARKED SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BTCP_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
	BTCP_PIN
} STATS SEC(".maps");

/*
 * What the program guards: the VIP, its service ports, and whether packets
 * to them that no entry and no local socket claims are dropped. Per
 * program, never pinned: each loader writes its own before attaching (so a
 * program that replaces a pinned one on its link guards from its first
 * packet), and the pinned program keeps its copy while no front runs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct btcp_config);
} CONFIG SEC(".maps");

/*
 * Staging area for one parked record per CPU. A PERCPU_ARRAY value is capped
 * at 32 KiB, too small for a 64 KiB GSO frame, so this is a plain array with
 * one slot per possible CPU (the loader sets max_entries), indexed by
 * bpf_get_smp_processor_id(). tc programs run with migration disabled and do
 * not nest on one CPU, so a slot has one writer at a time.
 */
struct park_scratch {
	struct parked_hdr hdr;
	__u8 frame[BTCP_PARK_MAX_FRAME];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* overridden at load time */
	__type(key, __u32);
	__type(value, struct park_scratch);
} SCRATCH SEC(".maps");

#endif /* BTCP_MAPS_H */
