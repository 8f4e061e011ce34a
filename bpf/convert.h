/* Convert SYN and MPTCP option recognition shared by steer.c, synwin.c and
 * synhold.c. Include after parse.h. */
#pragma once

#include "parse.h"

/* linear makes the first n bytes of skb directly readable. */
static __always_inline int linear(struct __sk_buff *skb, __u32 n)
{
	if ((void *)(long)skb->data + n <= (void *)(long)skb->data_end)
		return 0;
	if (n > skb->len)
		return -1;
	return bpf_skb_pull_data(skb, n) ? -1 : 0;
}

/* Convert message: version 1, total length in 32-bit words, magic 0x2263,
 * then the first TLV (type, length in words). */
#define CONVERT_VERSION 1
#define CONVERT_MAGIC_HI 0x22
#define CONVERT_MAGIC_LO 0x63
#define TLV_INFO 0x01
#define TLV_CONNECT 0x0a
#define TLV_COOKIE 0x16
#define CONVERT_MIN_LEN 8 /* header + one TLV word */

/* is_convert reports whether the SYN payload starts with a plausible,
 * complete Convert message. */
static __always_inline int is_convert(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 off = p->tcp_off + p->doff;
	void *data, *data_end;
	__u8 *m;

	if (p->paylen < CONVERT_MIN_LEN || p->tcp_off > MAX_TCP_OFF || p->doff > 60)
		return 0;
	if (linear(skb, off + 6))
		return 0;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	m = data + off;
	if ((void *)(m + 6) > data_end)
		return 0;
	if (m[0] != CONVERT_VERSION || m[1] < 2 || (__u32)m[1] * 4 > p->paylen)
		return 0;
	if (m[2] != CONVERT_MAGIC_HI || m[3] != CONVERT_MAGIC_LO)
		return 0;
	/* A message may start with any TLV a client sends (RFC 8803
	 * Appendix A's A9 starts with its Cookie). */
	if (m[4] != TLV_CONNECT && m[4] != TLV_INFO && m[4] != TLV_COOKIE)
		return 0;
	return m[5] >= 1 && m[5] < m[1];
}

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MPTCP 30

#define MPTCP_SUB_CAPABLE 0
#define MPTCP_SUB_JOIN 1

/* mptcp_option returns the SYN's first MPTCP option (kind 30) that is at
 * least min_len bytes long, those bytes readable, or NULL. min_len must be
 * a constant: the verifier then knows how far the pointer may be read. */
static __always_inline __u8 *mptcp_option(struct __sk_buff *skb, const struct pkt *p, __u32 min_len)
{
	__u32 optlen = p->doff - sizeof(struct tcphdr);
	__u32 base = p->tcp_off + sizeof(struct tcphdr);
	void *data, *data_end;
	__u8 *opts, *o;
	__u32 i = 0;

	if (optlen < min_len || optlen > TCP_MAX_OPTLEN || p->tcp_off > MAX_TCP_OFF)
		return NULL;
	if (linear(skb, base + optlen))
		return NULL;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	opts = data + base;

	for (int n = 0; n < TCP_MAX_OPTLEN; n++) {
		/* Forget i's exact value so the verifier can prune states
		 * across the walk instead of exploring every path. */
		asm volatile("%0 &= 63" : "+r"(i));
		if (i >= optlen)
			return NULL;
		o = opts + i;
		if ((void *)(o + 1) > data_end)
			return NULL;
		if (o[0] == TCPOPT_EOL)
			return NULL;
		if (o[0] == TCPOPT_NOP) {
			i++;
			continue;
		}
		if ((void *)(o + 2) > data_end || o[1] < 2)
			return NULL;
		if (o[0] == TCPOPT_MPTCP && o[1] >= min_len) {
			if ((void *)(o + min_len) > data_end)
				return NULL;
			return o;
		}
		i += o[1];
	}
	return NULL;
}
