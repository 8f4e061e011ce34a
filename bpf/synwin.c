//go:build ignore

/* synwin runs at tcx ingress where Convert clients' SYNs arrive, ahead of
 * any other program there. It works around a Linux MPTCP fault on the
 * passive side of connections opened with TCP Fast Open data (see
 * internal/tfowindow and kernel/): the kernel builds the child socket from
 * the SYN and shifts the SYN's window by the client's window scale, which
 * is wrong for a SYN; the MPTCP socket's send window edge is taken from
 * that value before TCP corrects it, and it never shrinks. With a second
 * subflow the converter then overruns the client's receive window and
 * downloads stall for seconds.
 *
 * The program lowers the window field of a Convert SYN that carries a
 * window scale option to window >> wscale (at least 1), so that the
 * kernel's wrong shift lands at or below the window the client offered.
 * Nothing else reads a SYN's window on the converter: the child's TCP
 * window is taken from the client's third ACK, and the converter writes
 * nothing before it. Every other packet passes untouched. */

#include <linux/pkt_cls.h>
#include "parse.h"
#include "convert.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* tcx: hand the packet to the next program (linux/pkt_cls.h of Linux 6.6
 * and later; the build headers may be older). */
#ifndef TCX_NEXT
#define TCX_NEXT (-1)
#endif

#define TCPOPT_WINDOW 3
#define TCPOLEN_WINDOW 3
#define TCP_WINDOW_OFF 14 /* window field within the TCP header */
#define TCP_CSUM_OFF 16
#define TCP_MAX_WSCALE 14 /* RFC 7323: larger values are taken as 14 */

enum synwin_counter {
	SYNWIN_CLAMPED,  /* Convert SYNs whose window was lowered */
	SYNWIN_UNSCALED, /* Convert SYNs without window scaling: left alone */
	SYNWIN_FAILED,   /* rewrite refused by the kernel */
	SYNWIN_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYNWIN_COUNTERS);
	__type(key, enum synwin_counter);
	__type(value, __u64);
} synwin_counters SEC(".maps");

static __always_inline void count(enum synwin_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&synwin_counters, &key);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

/* wscale returns the SYN's window scale option, or -1 without one. */
static __always_inline int wscale(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 optlen = p->doff - sizeof(struct tcphdr);
	__u32 base = p->tcp_off + sizeof(struct tcphdr);
	void *data, *data_end;
	__u8 *opts, *o;
	__u32 i = 0;

	if (optlen < TCPOLEN_WINDOW || optlen > TCP_MAX_OPTLEN || p->tcp_off > MAX_TCP_OFF)
		return -1;
	if (linear(skb, base + optlen))
		return -1;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	opts = data + base;

	for (int n = 0; n < TCP_MAX_OPTLEN; n++) {
		asm volatile("%0 &= 63" : "+r"(i)); /* see join_token in steer.c */
		if (i >= optlen)
			return -1;
		o = opts + i;
		if ((void *)(o + 1) > data_end)
			return -1;
		if (o[0] == TCPOPT_EOL)
			return -1;
		if (o[0] == TCPOPT_NOP) {
			i++;
			continue;
		}
		if ((void *)(o + 2) > data_end || o[1] < 2)
			return -1;
		if (o[0] == TCPOPT_WINDOW && o[1] == TCPOLEN_WINDOW) {
			if ((void *)(o + 3) > data_end)
				return -1;
			return o[2] > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : o[2];
		}
		i += o[1];
	}
	return -1;
}

SEC("tc")
int synwin(struct __sk_buff *skb)
{
	struct pkt p = {};
	__be16 old, new;
	__u16 win;
	int ws;

	if (parse_tcp(skb, &p))
		return TCX_NEXT;
	if ((p.flags & (TCPF_SYN | TCPF_ACK | TCPF_RST | TCPF_FIN)) != TCPF_SYN)
		return TCX_NEXT;
	if (!is_convert(skb, &p))
		return TCX_NEXT;
	ws = wscale(skb, &p);
	if (ws <= 0) {
		count(SYNWIN_UNSCALED);
		return TCX_NEXT;
	}
	if (p.tcp_off > MAX_TCP_OFF || linear(skb, p.tcp_off + sizeof(struct tcphdr)))
		return TCX_NEXT;
	if (bpf_skb_load_bytes(skb, p.tcp_off + TCP_WINDOW_OFF, &old, sizeof(old)))
		return TCX_NEXT;
	win = bpf_ntohs(old) >> ws;
	if (win == 0)
		win = 1;
	new = bpf_htons(win);
	if (new == old)
		return TCX_NEXT;
	if (bpf_l4_csum_replace(skb, p.tcp_off + TCP_CSUM_OFF, old, new, sizeof(new)) ||
	    bpf_skb_store_bytes(skb, p.tcp_off + TCP_WINDOW_OFF, &new, sizeof(new), 0)) {
		count(SYNWIN_FAILED);
		return TCX_NEXT;
	}
	count(SYNWIN_CLAMPED);
	return TCX_NEXT;
}
