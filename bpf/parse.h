/* Packet parsing shared by steer.c, synack.c and synwin.c: Ethernet, then
 * IPv4 or IPv6 (with the common extension headers, see below), then TCP.
 * Offsets are kept as bounded scalars so callers can re-derive packet
 * pointers after bpf_skb_pull_data. The headers must be in the linear part
 * of the skb, as drivers and GRO leave them; nothing is pulled here. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* IPv4 "more fragments" flag and fragment offset: any fragment is skipped,
 * a first fragment would show a truncated TCP payload. */
#define IP_FRAG_MASK 0x3fff

#define TCP_MAX_OPTLEN 40

/* IPv6 extension headers walked before TCP (RFC 8200 section 4): hop-by-hop
 * options (first only, as the kernel wants it), routing headers with no
 * segments left, and destination options; at most IPV6_MAX_EXT_HDRS of them,
 * IPV6_MAX_EXT_LEN bytes together. Anything else is not parsed and the packet
 * is left alone: a fragment header (a first fragment would show a truncated
 * TCP payload, as for IPv4), AH, ESP, a routing header with segments left
 * (the destination address is not the final one: the kernel forwards such a
 * packet to the next segment), or more or longer headers. */
#define IPV6_MAX_EXT_HDRS 4
#define IPV6_MAX_EXT_LEN 256

/* Largest offset of the TCP header: Ethernet + IPv6 with extension headers
 * (IPv4 with options, 14 + 60, is below). */
#define MAX_TCP_OFF (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + IPV6_MAX_EXT_LEN)

struct pkt {
	struct bpf_sock_tuple tuple; /* network byte order, as the lookup helpers want */
	__u32 tuple_len;
	__u32 tcp_off;    /* from skb->data to the TCP header */
	__u32 doff;       /* TCP header length in bytes, 20..60 */
	__u32 paylen;     /* TCP payload length from the IP length field */
	__u8 flags;       /* TCP flags byte (byte 13 of the header) */
	__u8 v4;
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/* parse_tcp fills p for a TCP segment and returns 0, or -1 for anything else. */
static __always_inline int parse_tcp(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct tcphdr *tcp;
	__u32 l3len, iplen;

	if ((void *)(eth + 1) > data_end)
		return -1;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return -1;
		if (ip->protocol != IPPROTO_TCP || ip->ihl < 5)
			return -1;
		if (ip->frag_off & bpf_htons(IP_FRAG_MASK))
			return -1;
		l3len = ip->ihl * 4;
		iplen = bpf_ntohs(ip->tot_len);
		if (iplen < l3len)
			return -1;
		iplen -= l3len;
		tcp = (void *)ip + l3len;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		p->tuple.ipv4.saddr = ip->saddr;
		p->tuple.ipv4.daddr = ip->daddr;
		p->tuple.ipv4.sport = tcp->source;
		p->tuple.ipv4.dport = tcp->dest;
		p->tuple_len = sizeof(p->tuple.ipv4);
		p->v4 = 1;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		__u32 ext = 0; /* bytes of extension headers, <= IPV6_MAX_EXT_LEN */
		__u8 next;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		next = ip6->nexthdr;
		for (int i = 0; i < IPV6_MAX_EXT_HDRS; i++) {
			/* nexthdr, hdrlen, and for routing: type, segments left.
			 * Every extension header is at least 8 bytes. */
			struct ipv6_rt_hdr *h;

			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS)
				break;
			if (next == IPPROTO_HOPOPTS && i > 0)
				return -1;
			h = (void *)(ip6 + 1) + ext;
			if ((void *)(h + 1) > data_end)
				return -1;
			if (next == IPPROTO_ROUTING && h->segments_left)
				return -1;
			next = h->nexthdr;
			ext += ((__u32)h->hdrlen + 1) * 8;
			if (ext > IPV6_MAX_EXT_LEN)
				return -1;
		}
		if (next != IPPROTO_TCP)
			return -1;
		/* Forget which path through the walk ext came from, so that the
		 * verifier sees one range [0, IPV6_MAX_EXT_LEN] and prunes the
		 * rest of the program once instead of once per chain. */
		asm volatile("%0 &= 511" : "+r"(ext));
		if (ext > IPV6_MAX_EXT_LEN)
			return -1;
		l3len = sizeof(*ip6) + ext;
		iplen = bpf_ntohs(ip6->payload_len);
		if (iplen < ext)
			return -1;
		iplen -= ext;
		tcp = (void *)(ip6 + 1) + ext;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		__builtin_memcpy(p->tuple.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->tuple.ipv6.daddr, &ip6->daddr, 16);
		p->tuple.ipv6.sport = tcp->source;
		p->tuple.ipv6.dport = tcp->dest;
		p->tuple_len = sizeof(p->tuple.ipv6);
		p->v4 = 0;
	} else {
		return -1;
	}

	/* An IP length beyond the frame is a lie the kernel will drop the
	 * packet for; do not classify on it. Padding (shorter) is fine. */
	if (sizeof(*eth) + l3len + iplen > skb->len)
		return -1;
	p->doff = tcp->doff * 4;
	if (p->doff < sizeof(*tcp) || iplen < p->doff)
		return -1;
	p->tcp_off = sizeof(*eth) + l3len;
	p->paylen = iplen - p->doff;
	p->flags = ((__u8 *)tcp)[13];
	return 0;
}

/* sock_state returns the TCP state of the local socket of the packet's own
 * tuple (request and time-wait sockets included: skc_lookup), or -1 when
 * there is none; the reference is dropped at once. */
static __always_inline int sock_state(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_sock *sk;
	int state;

	if (p->v4)
		sk = bpf_skc_lookup_tcp(skb, &p->tuple, sizeof(p->tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_skc_lookup_tcp(skb, &p->tuple, sizeof(p->tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	state = sk->state;
	bpf_sk_release(sk);
	return state;
}
