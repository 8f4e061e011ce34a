//go:build ignore

/* synhold holds the converter's SYN+ACK to an MPTCP client that put its
 * Convert message in the SYN until the converter's own connect to the
 * server has been answered (RFC 8803's timing), without kernel changes:
 *
 *   hold_syn  (tcx ingress, client-facing interfaces) notes each SYN that
 *             carries MP_CAPABLE and a Convert message in its data, sent to
 *             one of the converter's ports (any port in transparent mode):
 *             its 4-tuple, ISN, data length and arrival time;
 *   hold_synack (tcx egress, the same interfaces) drops the listener's
 *             SYN+ACK that answers such a SYN and acknowledges its data,
 *             after copying the frame to a ring buffer.
 *
 * User space (package synhold) re-sends the copied frame, marked so that
 * it passes, once the server answered or at the cap; or it refuses the client (RST, ICMP) and
 * never sends it. A SYN+ACK that does not acknowledge the SYN data (the
 * kernel refused Fast Open) is never held. Joins, SYNs without data and
 * plain TCP SYNs are never noted.
 *
 * delay_reply (tcx egress, test and lab use only) holds every SYN+ACK and
 * RST from one of the configured ports, to delay a server's answers in its
 * own namespace; user space re-sends each after a fixed delay. */

#include <linux/pkt_cls.h>
#include "parse.h"
#include "convert.h"

char __license[] SEC("license") = "Dual MIT/GPL";

#ifndef TCX_NEXT
#define TCX_NEXT (-1)
#endif

#define HOLD_FRAME_MAX 320 /* Ethernet + IPv6 with extension headers + TCP with options */

/* The flow as the converter's accepted socket sees it: the client's
 * address and the local (listener's or, transparent, the original
 * destination's) address. IPv4 as IPv4-mapped IPv6; ports in host order. */
struct hold_key {
	__u8 client_addr[16];
	__u8 local_addr[16];
	__u16 client_port;
	__u16 local_port;
};

enum hold_state {
	HOLD_NOTED = 1, /* the SYN was seen, no SYN+ACK yet */
	HOLD_HELD,      /* a SYN+ACK was dropped and copied */
};

/* User space re-sends a held frame with this mark (SO_MARK on its packet
 * socket): it passes every hold program, a predecessor's during an
 * upgrade too. Keep in step with bpf.ReleaseMark. */
#define HOLD_RELEASE_MARK 0x53594e48

struct hold_val {
	__u64 syn_ns; /* bpf_ktime_get_ns at the SYN */
	__u32 isn;
	__u32 datalen;
	__u32 state;
	__u32 pad;
};

/* One held frame. */
struct hold_event {
	__u64 syn_ns; /* of the flow's SYN; 0 for delay_reply */
	__u32 len;    /* bytes of frame used */
	__u32 ifindex;
	__u8 frame[HOLD_FRAME_MAX];
};

/* Keeps struct hold_event in the BTF for the generated Go type. */
const struct hold_event *unused_hold_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct hold_key);
	__type(value, struct hold_val);
} hold_flows SEC(".maps");

/* The converter's listening ports (host order); port 0: every port
 * (transparent mode). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u16);
	__type(value, __u8);
} hold_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} hold_events SEC(".maps");

enum hold_counter {
	HOLD_SYNS_NOTED,     /* MPTCP Convert SYNs with data noted */
	HOLD_SYNS_PLAIN,     /* Convert SYNs without MP_CAPABLE: not held */
	HOLD_SYNACKS_HELD,   /* SYN+ACKs dropped and copied */
	HOLD_SYNACKS_UNACKED, /* SYN+ACKs that did not acknowledge the SYN data: passed */
	HOLD_RING_FULL,      /* no room in the ring buffer: passed */
	HOLD_DELAYED,        /* delay_reply: frames held */
	HOLD_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HOLD_COUNTERS);
	__type(key, enum hold_counter);
	__type(value, __u64);
} hold_counters SEC(".maps");

static __always_inline void count(enum hold_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&hold_counters, &key);

	if (v)
		*v += 1;
}

static __always_inline int port_held(__u16 port)
{
	__u16 any = 0;

	return bpf_map_lookup_elem(&hold_ports, &port) || bpf_map_lookup_elem(&hold_ports, &any);
}

/* key_of fills k from p; inbound: the packet comes from the client. */
static __always_inline void key_of(struct hold_key *k, const struct pkt *p, int inbound)
{
	__u8 *src = inbound ? k->client_addr : k->local_addr;
	__u8 *dst = inbound ? k->local_addr : k->client_addr;
	__u16 sport, dport;

	if (p->v4) {
		src[10] = src[11] = 0xff;
		dst[10] = dst[11] = 0xff;
		__builtin_memcpy(src + 12, &p->tuple.ipv4.saddr, 4);
		__builtin_memcpy(dst + 12, &p->tuple.ipv4.daddr, 4);
		sport = bpf_ntohs(p->tuple.ipv4.sport);
		dport = bpf_ntohs(p->tuple.ipv4.dport);
	} else {
		__builtin_memcpy(src, p->tuple.ipv6.saddr, 16);
		__builtin_memcpy(dst, p->tuple.ipv6.daddr, 16);
		sport = bpf_ntohs(p->tuple.ipv6.sport);
		dport = bpf_ntohs(p->tuple.ipv6.dport);
	}
	k->client_port = inbound ? sport : dport;
	k->local_port = inbound ? dport : sport;
}

/* mp_capable reports whether the SYN carries an MP_CAPABLE option (kind
 * 30, subtype 0): the client asks for MPTCP. */
static __always_inline int mp_capable(struct __sk_buff *skb, const struct pkt *p)
{
	__u8 *o = mptcp_option(skb, p, 3);

	return o && (o[2] >> 4) == MPTCP_SUB_CAPABLE;
}

/* tcp_word reads the 32-bit field at off within the TCP header. */
static __always_inline int tcp_word(struct __sk_buff *skb, const struct pkt *p, __u32 off, __u32 *v)
{
	__be32 w;

	if (p->tcp_off > MAX_TCP_OFF || bpf_skb_load_bytes(skb, p->tcp_off + off, &w, sizeof(w)))
		return -1;
	*v = bpf_ntohl(w);
	return 0;
}

SEC("tc")
int hold_syn(struct __sk_buff *skb)
{
	struct hold_key k = {};
	struct hold_val v = {};
	struct pkt p = {};

	if (parse_tcp(skb, &p))
		return TCX_NEXT;
	if ((p.flags & (TCPF_SYN | TCPF_ACK | TCPF_RST | TCPF_FIN)) != TCPF_SYN || p.paylen == 0)
		return TCX_NEXT;
	if (!port_held(bpf_ntohs(p.v4 ? p.tuple.ipv4.dport : p.tuple.ipv6.dport)))
		return TCX_NEXT;
	if (!is_convert(skb, &p))
		return TCX_NEXT;
	if (!mp_capable(skb, &p)) {
		count(HOLD_SYNS_PLAIN);
		return TCX_NEXT;
	}
	if (tcp_word(skb, &p, 4, &v.isn))
		return TCX_NEXT;
	v.syn_ns = bpf_ktime_get_ns();
	v.datalen = p.paylen;
	v.state = HOLD_NOTED;
	key_of(&k, &p, 1);
	if (bpf_map_update_elem(&hold_flows, &k, &v, BPF_ANY) == 0)
		count(HOLD_SYNS_NOTED);
	return TCX_NEXT;
}

/* copy_frame puts the whole frame in the ring buffer; -1 when it does not
 * fit or there is no room. */
static __always_inline int copy_frame(struct __sk_buff *skb, __u64 syn_ns)
{
	struct hold_event *e;
	__u32 len = skb->len;

	if (len < 1 || len > HOLD_FRAME_MAX)
		return -1;
	e = bpf_ringbuf_reserve(&hold_events, sizeof(*e), 0);
	if (!e) {
		count(HOLD_RING_FULL);
		return -1;
	}
	if (bpf_skb_load_bytes(skb, 0, e->frame, len)) {
		bpf_ringbuf_discard(e, 0);
		return -1;
	}
	e->syn_ns = syn_ns;
	e->len = len;
	e->ifindex = skb->ifindex;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tc")
int hold_synack(struct __sk_buff *skb)
{
	struct hold_key k = {};
	struct hold_val *v;
	struct pkt p = {};
	__u32 ack;

	if (skb->mark == HOLD_RELEASE_MARK || parse_tcp(skb, &p))
		return TCX_NEXT;
	if ((p.flags & (TCPF_SYN | TCPF_ACK | TCPF_RST)) != (TCPF_SYN | TCPF_ACK))
		return TCX_NEXT;
	key_of(&k, &p, 0);
	v = bpf_map_lookup_elem(&hold_flows, &k);
	if (!v)
		return TCX_NEXT;
	if (tcp_word(skb, &p, 8, &ack))
		return TCX_NEXT;
	if (ack != v->isn + 1 + v->datalen) {
		/* No Fast Open child (its queue was full, or the data was
		 * refused): no session will ask for this one. */
		count(HOLD_SYNACKS_UNACKED);
		bpf_map_delete_elem(&hold_flows, &k);
		return TCX_NEXT;
	}
	if (copy_frame(skb, v->syn_ns)) {
		bpf_map_delete_elem(&hold_flows, &k);
		return TCX_NEXT;
	}
	v->state = HOLD_HELD;
	count(HOLD_SYNACKS_HELD);
	return TC_ACT_SHOT;
}

SEC("tc")
int delay_reply(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (skb->mark == HOLD_RELEASE_MARK || parse_tcp(skb, &p))
		return TCX_NEXT;
	if (!(p.flags & TCPF_RST) && (p.flags & (TCPF_SYN | TCPF_ACK)) != (TCPF_SYN | TCPF_ACK))
		return TCX_NEXT;
	if (!port_held(bpf_ntohs(p.v4 ? p.tuple.ipv4.sport : p.tuple.ipv6.sport)))
		return TCX_NEXT;
	if (copy_frame(skb, 0))
		return TCX_NEXT;
	count(HOLD_DELAYED);
	return TC_ACT_SHOT;
}
