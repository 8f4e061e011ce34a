//go:build ignore

/* steer runs at tcx ingress on the converter's client-facing interfaces. It
 * hands Convert SYNs and MP_JOIN SYNs of known connections to the
 * converter's transparent MPTCP listener (bpf_sk_assign) and marks every
 * packet of locally terminated flows, so that policy routing (fwmark ->
 * `local` route) delivers them instead of forwarding them to the real
 * destination. Everything else is left alone. */

#include <linux/pkt_cls.h>
#include "parse.h"
#include "convert.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Set from Go before load. */
volatile const __u32 mark = 0;           /* skb->mark for local delivery */
volatile const __u16 converter_port = 0; /* the converter's listener port */

enum steer_counter {
	STEER_STEERED,       /* SYNs assigned to a listener (joins included) */
	STEER_JOINS_STEERED, /* MP_JOIN SYNs among them */
	STEER_PASSED,        /* packets left alone */
	STEER_EST_MARKED,    /* packets of locally terminated flows */
	STEER_LOOKUP_FAILED, /* SYNs to steer but no listener found */
	STEER_ASSIGN_FAILED, /* bpf_sk_assign refused */
	STEER_TIME_WAIT,     /* packets whose tuple is a local TIME_WAIT socket's,
			      * not marked (also counted in one of the above) */
	STEER_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_COUNTERS);
	__type(key, enum steer_counter);
	__type(value, __u64);
} steer_counters SEC(".maps");

/* Local MPTCP tokens of accepted connections, as the 4 bytes appear in
 * MP_JOIN (a big-endian number, read here as a native u32). max_entries is
 * set from Go at load to the daemon's session limit (one token per session);
 * not preallocated, so memory follows the sessions, not the limit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u8);
} tokens SEC(".maps");

/* Ports (host order) on which the converter has its own transparent
 * listener, registered from Go. Only these are tried for a listener on the
 * SYN's own destination port: any other listener there (sshd on :22, say)
 * is not the converter's, and a SYN assigned to it would be dropped. One
 * slot per possible port, so adding never fails for lack of room; not
 * preallocated, so memory follows use. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, __u8);
} listener_ports SEC(".maps");

static __always_inline void count(enum steer_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&steer_counters, &key);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

/* local_flow reports whether the packet's own tuple names a local socket of
 * a flow the converter terminates: an established (or closing) or request
 * socket. Uses skc_lookup (request sockets are not full sockets) and drops
 * the reference at once.
 *
 * A listener is not a flow, and neither is a TIME_WAIT socket: its
 * connection is over, and the client may reuse the 4-tuple for a new one at
 * once. Marked, a plain connection from the same client port to the real
 * server would be delivered here for up to a minute: the time-wait socket
 * hands a new SYN to a listener on its port, so the converter's transparent
 * listener on that port would take it (in preservation mode a client's own
 * direct connection to the server could be hit the same way).
 *
 * What the time-wait socket does not get: late segments of the connection
 * that ended, which the kernel would have answered from TIME_WAIT, a
 * retransmitted FIN whose ACK was lost above all. The peer is then in
 * LAST_ACK (its side is closed) and ends on a reset or a timeout instead of
 * the ACK: harmless. Where they go: with net.ipv4.tcp_early_demux=0 (it
 * covers IPv6 too) they are forwarded to the real server (for a preserved
 * server leg, to the client), which answers with a reset. With early demux
 * on, the default, the kernel attaches the time-wait socket to the packet
 * before routing it and ip(6)_forward drops packets that carry a socket: the
 * late segments are dropped, and so is a new flow on the tuple until
 * TIME_WAIT ends (about 60 s): it stalls instead of being taken. The
 * converter's namespace should run with tcp_early_demux=0.
 *
 * BPF sees the time-wait form of an orphaned FIN_WAIT2 socket (closed by
 * the converter, FIN acknowledged, peer's FIN not yet in) as TIME_WAIT too,
 * so the peer's FIN is not marked either. The relay half-closes with
 * shutdown and closes only once both directions are done, so the peer's FIN
 * normally reaches a full FIN_WAIT2 socket and is marked; the orphaned case
 * is that of aborted sessions. (Telling the two apart would need
 * bpf_skc_to_tcp_timewait_sock and the kernel's BTF for tw_substate.)
 * Packets left unmarked here are counted in time_wait. */
static __always_inline int local_flow(struct __sk_buff *skb, struct pkt *p)
{
	int state = sock_state(skb, p);

	if (state < 0)
		return 0;
	if (state == BPF_TCP_TIME_WAIT) {
		count(STEER_TIME_WAIT);
		return 0;
	}
	return state != BPF_TCP_LISTEN;
}

#define MPTCP_JOIN_SYN_LEN 12

/* join_token finds an MP_JOIN option (kind 30, subtype 1) and copies its
 * receiver token (option bytes 4..7) in wire order. */
static __always_inline int join_token(struct __sk_buff *skb, const struct pkt *p, __u32 *token)
{
	__u8 *o = mptcp_option(skb, p, MPTCP_JOIN_SYN_LEN);

	if (!o || (o[2] >> 4) != MPTCP_SUB_JOIN)
		return 0;
	__builtin_memcpy(token, o + 4, 4);
	return 1;
}

static __always_inline struct bpf_sock *sk_lookup(struct __sk_buff *skb, struct pkt *p)
{
	if (p->v4)
		return bpf_sk_lookup_tcp(skb, &p->tuple, sizeof(p->tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	return bpf_sk_lookup_tcp(skb, &p->tuple, sizeof(p->tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
}

/* listener finds the listener for a SYN to steer: the converter's
 * per-port transparent listener on the packet's own destination port, if
 * that port is registered in listener_ports (joins need one, as the kernel
 * only accepts a join on the connection's local port), else the
 * converter's port. The daddr stays the original one: wildcard listeners
 * match any address. */
static __always_inline struct bpf_sock *listener(struct __sk_buff *skb, struct pkt *p)
{
	__u16 dport = bpf_ntohs(p->v4 ? p->tuple.ipv4.dport : p->tuple.ipv6.dport);
	struct bpf_sock *sk;

	if (dport != converter_port && bpf_map_lookup_elem(&listener_ports, &dport)) {
		sk = sk_lookup(skb, p);
		if (sk) {
			if (sk->state == BPF_TCP_LISTEN)
				return sk;
			bpf_sk_release(sk);
		}
	}
	if (p->v4)
		p->tuple.ipv4.dport = bpf_htons(converter_port);
	else
		p->tuple.ipv6.dport = bpf_htons(converter_port);
	sk = sk_lookup(skb, p);
	if (sk && sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return NULL;
	}
	return sk;
}

static __always_inline int steer_syn(struct __sk_buff *skb, struct pkt *p, int join)
{
	struct bpf_sock *sk = listener(skb, p);
	long err;

	if (!sk) {
		count(STEER_LOOKUP_FAILED);
		return TC_ACT_OK;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(STEER_ASSIGN_FAILED);
		return TC_ACT_OK;
	}
	skb->mark = mark;
	count(STEER_STEERED);
	if (join)
		count(STEER_JOINS_STEERED);
	return TC_ACT_OK;
}

SEC("tc")
int steer(struct __sk_buff *skb)
{
	struct pkt p = {};
	__u32 token = 0;

	if (parse_tcp(skb, &p))
		goto pass;
	if (local_flow(skb, &p)) {
		skb->mark = mark;
		count(STEER_EST_MARKED);
		return TC_ACT_OK;
	}
	if ((p.flags & (TCPF_SYN | TCPF_ACK | TCPF_RST | TCPF_FIN)) != TCPF_SYN)
		goto pass;
	if (is_convert(skb, &p))
		return steer_syn(skb, &p, 0);
	if (join_token(skb, &p, &token) && bpf_map_lookup_elem(&tokens, &token))
		return steer_syn(skb, &p, 1);
pass:
	count(STEER_PASSED);
	return TC_ACT_OK;
}
