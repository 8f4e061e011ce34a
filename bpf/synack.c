//go:build ignore

/* synack runs at tcx ingress on the converter's server-facing interface and
 * keeps the TCP options of every SYN+ACK exactly as received, so that the
 * converter can echo the server's options to its client (RFC 8803 Extended
 * TCP Header TLV): the kernel exposes only a digest of them in TCP_INFO. */

#include <linux/pkt_cls.h>
#include "parse.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* The server's side of the server-leg connection plus our local port: what
 * the converter knows right after connect. */
struct synack_key {
	__u8 addr[16]; /* IPv6, or IPv4-mapped IPv6 */
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

#define MAX_TCP_END (sizeof(struct ethhdr) + 60 + 60)

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
		return TC_ACT_OK;
	if ((p.flags & (TCPF_SYN | TCPF_ACK | TCPF_RST)) != (TCPF_SYN | TCPF_ACK))
		return TC_ACT_OK;

	end = p.tcp_off + p.doff;
	if (end > MAX_TCP_END)
		return TC_ACT_OK;
	if ((void *)(long)skb->data + end > (void *)(long)skb->data_end &&
	    (end > skb->len || bpf_skb_pull_data(skb, end)))
		return TC_ACT_OK;
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
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &p.tuple.ipv4.saddr, 4);
		key.server_port = bpf_ntohs(p.tuple.ipv4.sport);
		key.local_port = bpf_ntohs(p.tuple.ipv4.dport);
	} else {
		__builtin_memcpy(key.addr, p.tuple.ipv6.saddr, 16);
		key.server_port = bpf_ntohs(p.tuple.ipv6.sport);
		key.local_port = bpf_ntohs(p.tuple.ipv6.dport);
	}

	if (bpf_map_update_elem(&synack_opts, &key, &val, BPF_ANY))
		count(SYNACK_UPDATE_FAILED);
	else
		count(SYNACK_CAPTURED);
	return TC_ACT_OK;
}
