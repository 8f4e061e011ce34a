//go:build ignore

/* synack runs at tcx ingress on the converter's server-facing interface and
 * keeps the TCP options of the SYN+ACKs that answer the converter's own
 * connecting sockets exactly as received, so that the converter can echo the
 * server's options to its client (RFC 8803 Extended TCP Header TLV): the
 * kernel exposes only a digest of them in TCP_INFO.
 *
 * A SYN+ACK is stored only when a local socket in SYN_SENT owns its 4-tuple:
 * anything else (a forwarded SYN+ACK, a retransmission after the handshake,
 * a forged one) would only fill the LRU map and push out the entries the
 * engine is about to read. Entries are keyed by the full 4-tuple, so that
 * two server legs to the same server port from different local addresses
 * (address pool, preservation) with the same local port stay apart. */

#include <linux/pkt_cls.h>
#include "parse.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* The program only watches: it runs first on the interface and hands every
 * packet to the next program (tcx stops at the first other verdict, and the
 * steering program is on the server-facing interfaces too with address
 * preservation). TCX_NEXT is in linux/pkt_cls.h of Linux 6.6 and later; the
 * build headers may be older. */
#ifndef TCX_NEXT
#define TCX_NEXT (-1)
#endif

/* The server leg's 4-tuple, as the converter knows it right after connect
 * (getpeername, getsockname). Addresses are IPv6, or IPv4-mapped IPv6. */
struct synack_key {
	__u8 server_addr[16];
	__u8 local_addr[16];
	__u16 server_port; /* host byte order */
	__u16 local_port;  /* host byte order */
};

struct synack_val {
	__u8 len; /* number of valid bytes in opts */
	__u8 pad[3];
	__u8 opts[TCP_MAX_OPTLEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH); /* old entries age out if not deleted */
	__uint(max_entries, 65536);
	__type(key, struct synack_key);
	__type(value, struct synack_val);
} synack_opts SEC(".maps");

enum synack_counter {
	SYNACK_CAPTURED,      /* SYN+ACKs stored */
	SYNACK_UPDATE_FAILED, /* map update refused */
	SYNACK_SKIPPED,       /* SYN+ACKs that answer no local SYN_SENT socket */
	SYNACK_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYNACK_COUNTERS);
	__type(key, enum synack_counter);
	__type(value, __u64);
} synack_counters SEC(".maps");

static __always_inline void count(enum synack_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&synack_counters, &key);

	if (v)
		*v += 1;
}

#define MAX_TCP_END (MAX_TCP_OFF + 60)

/* connecting reports whether the packet's tuple names a local socket in
 * SYN_SENT: one of the converter's own connects waiting for this SYN+ACK.
 * The lookup helpers take the tuple of the packet as received (saddr = the
 * server), which is the socket's own tuple reversed. skc_lookup returns
 * whatever socket owns the tuple as it is (sk_lookup would turn a request
 * socket into its listener); the reference is dropped at once. */
static __always_inline int connecting(struct __sk_buff *skb, struct pkt *p)
{
	return sock_state(skb, p) == BPF_TCP_SYN_SENT;
}

SEC("tc")
int synack(struct __sk_buff *skb)
{
	struct synack_key key = {};
	struct synack_val val = {};
	void *data, *data_end;
	struct pkt p = {};
	__u32 optlen, end;
	__u8 *opts;

	if (parse_tcp(skb, &p))
		return TCX_NEXT;
	if ((p.flags & (TCPF_SYN | TCPF_ACK | TCPF_RST)) != (TCPF_SYN | TCPF_ACK))
		return TCX_NEXT;
	if (!connecting(skb, &p)) {
		count(SYNACK_SKIPPED);
		return TCX_NEXT;
	}

	end = p.tcp_off + p.doff;
	if (end > MAX_TCP_END)
		return TCX_NEXT;
	if ((void *)(long)skb->data + end > (void *)(long)skb->data_end &&
	    (end > skb->len || bpf_skb_pull_data(skb, end)))
		return TCX_NEXT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	opts = data + p.tcp_off + sizeof(struct tcphdr);
	optlen = p.doff - sizeof(struct tcphdr);

	for (int i = 0; i < TCP_MAX_OPTLEN; i++) {
		if (i >= optlen || (void *)(opts + i + 1) > data_end)
			break;
		val.opts[i] = opts[i];
		val.len = i + 1;
	}

	if (p.v4) {
		key.server_addr[10] = 0xff;
		key.server_addr[11] = 0xff;
		__builtin_memcpy(&key.server_addr[12], &p.tuple.ipv4.saddr, 4);
		key.local_addr[10] = 0xff;
		key.local_addr[11] = 0xff;
		__builtin_memcpy(&key.local_addr[12], &p.tuple.ipv4.daddr, 4);
		key.server_port = bpf_ntohs(p.tuple.ipv4.sport);
		key.local_port = bpf_ntohs(p.tuple.ipv4.dport);
	} else {
		__builtin_memcpy(key.server_addr, p.tuple.ipv6.saddr, 16);
		__builtin_memcpy(key.local_addr, p.tuple.ipv6.daddr, 16);
		key.server_port = bpf_ntohs(p.tuple.ipv6.sport);
		key.local_port = bpf_ntohs(p.tuple.ipv6.dport);
	}

	if (bpf_map_update_elem(&synack_opts, &key, &val, BPF_ANY))
		count(SYNACK_UPDATE_FAILED);
	else
		count(SYNACK_CAPTURED);
	return TCX_NEXT;
}
