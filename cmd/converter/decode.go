package main

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/tlv"
)

const decodeDescription = `Decodes Convert messages the way a dissector would.

--hex HEX decodes one message: a Client request, or with --reply a converter
reply. Whitespace and colons in HEX are ignored; an empty HEX is a message of
no bytes. Requests are validated with every step that needs no converter
policy and the reference set of honoured TCP options (4, 8, 30); cookies and
authorisation are not checked.

--pcap FILE reads a pcap or pcapng capture (gzip accepted, "-" is standard
input) with Ethernet, Linux cooked (SLL, SLL2), raw IP or BSD loopback
framing. Each TCP connection whose SYN was captured is followed in both
directions; the first bytes of the Client's stream (SYN data or the first
data after the handshake) are decoded as a request, the first bytes of the
other side's stream as a reply. Segments are put back in sequence order, so a
message split over segments or retransmitted is decoded once. A direction
without payload gives no record; a direction whose SYN or SYN+ACK was not
captured is not followed. A message is decoded as soon as enough contiguous
bytes are held; a message still incomplete at the end of the capture is
decoded as it is (refused as truncated). In a capture, trailing_bytes counts
the contiguous bytes after the message that were held when it was decoded:
for a message in one segment, the rest of that segment.

Exit status: 0 when every message is valid, 1 when the converter (or, for a
reply, the Client) would refuse one, 2 on usage or file errors.

JSON: --hex prints one message object; --pcap prints one record per line:
{"time","src","dst","syn","direction","message"}, time in RFC 3339 UTC with
nine fractional digits, src and dst those of the packet that carries the
first byte of the message.`

// decodeCommand is "converter decode".
func decodeCommand(std stdio) *cli.Command {
	return &cli.Command{
		Name:  "decode",
		Usage: "decode Convert messages from hex or from a packet capture",
		UsageText: "converter decode --hex HEX [--reply] [--json]\n" +
			"converter decode --pcap FILE [--json]",
		Description: decodeDescription,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "hex", Usage: "decode the message in `HEX`"},
			&cli.StringFlag{Name: "pcap", Usage: "decode the messages of every TCP connection in `FILE`"},
			&cli.BoolFlag{Name: "reply", Usage: "with --hex: the message is a converter reply"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON, one object per line"},
		},
		// Flag errors exit 2 without printing the help on standard output.
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError("decode: %v", err)
		},
		Action: func(c *cli.Context) error { return decodeAction(c, std) },
	}
}

func decodeAction(c *cli.Context, std stdio) error {
	hasHex, hasPcap := c.IsSet("hex"), c.IsSet("pcap")
	switch {
	case c.Args().Present():
		return usageError("decode: unexpected argument %q", c.Args().First())
	case hasHex && hasPcap:
		return usageError("decode: --hex and --pcap cannot be used together")
	case hasPcap && c.Bool("reply"):
		return usageError("decode: --reply only applies to --hex; a capture tells replies from requests")
	case hasPcap:
		return decodePcap(c.String("pcap"), c.Bool("json"), std)
	case hasHex:
		dir := msgRequest
		if c.Bool("reply") {
			dir = msgReply
		}
		return decodeHex(c.String("hex"), dir, c.Bool("json"), std)
	}
	return usageError("decode: nothing to decode: give --hex HEX or --pcap FILE")
}

// decodeExit is the result of a decode whose output was written.
func decodeExit(refused bool) error {
	if refused {
		return cli.Exit("", exitRefused)
	}
	return nil
}

func decodeHex(s string, dir msgDir, asJSON bool, std stdio) error {
	b, err := decodeHexArg(s)
	if err != nil {
		return usageError("decode: --hex: %v", err)
	}
	d := decodeMessage(b, dir)
	var out []byte
	if asJSON {
		out, err = decodeJSONLine(msgJSONOf(d))
		if err != nil {
			return err
		}
	} else {
		out = []byte(msgText(d))
	}
	if _, err := std.out.Write(out); err != nil {
		return err
	}
	return decodeExit(d.err != nil)
}

// decodeHexArg decodes s, ignoring whitespace and colons.
func decodeHexArg(s string) ([]byte, error) {
	s = strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) || r == ':' {
			return -1
		}
		return r
	}, s)
	return hex.DecodeString(s)
}

// msgDir says who sent a message.
type msgDir uint8

const (
	msgRequest msgDir = iota // Client to converter
	msgReply                 // converter to Client
)

func (d msgDir) String() string {
	if d == msgReply {
		return "reply"
	}
	return "request"
}

// decodedMsg is one message as the converter (or the Client, for a reply)
// reads it.
type decodedMsg struct {
	msg   tlv.Message // the TLVs decoded, also when the message is refused
	input []byte
	end   int             // where the message ends in input; trailing bytes follow
	err   *tlv.ParseError // nil when valid
}

func decodeMessage(b []byte, dir msgDir) *decodedMsg {
	d := &decodedMsg{input: b}
	var n int
	var err error
	if dir == msgReply {
		n, err = tlv.ParseReply(b, &d.msg)
	} else {
		n, err = tlv.ValidateRequest(b, &d.msg, tlv.ReferenceOptions)
	}
	d.err = decodeErrorOf(err)
	d.end = msgEnd(b, n, d.err)
	return d
}

func decodeErrorOf(err error) *tlv.ParseError {
	if err == nil {
		return nil
	}
	var pe *tlv.ParseError
	if errors.As(err, &pe) {
		return pe
	}
	return &tlv.ParseError{Code: tlv.CodeMalformedMessage, Reason: err.Error()}
}

// msgEnd is where a message ends in b. A refused message whose header is
// usable ends at its Total Length (or at the end of b if shorter); one whose
// header is not (short, other version, bad magic, length 0) takes all of b.
func msgEnd(b []byte, n int, pe *tlv.ParseError) int {
	if pe == nil {
		return n
	}
	if len(b) < tlv.HeaderLen || b[0] != tlv.Version1 || b[1] == 0 ||
		binary.BigEndian.Uint16(b[2:4]) != tlv.Magic {
		return len(b)
	}
	return min(len(b), int(b[1])*tlv.WordLen)
}

func (d *decodedMsg) version() int     { return msgByteAt(d.input, 0) }
func (d *decodedMsg) totalLength() int { return msgByteAt(d.input, 1) }
func (d *decodedMsg) trailing() int    { return len(d.input) - d.end }

// msgByteAt is b[i], or 0 past the end of b. Header fields are read from
// the wire, so that a message refused before its header was stored still
// shows them.
func msgByteAt(b []byte, i int) int {
	if i < len(b) {
		return int(b[i])
	}
	return 0
}

// tlvView is one TLV with its fields decoded, shared by both output forms.
type tlvView struct {
	t       tlv.TLV
	connect *tlv.Connect
	options []tlv.TCPOption // Connect and Extended TCP Header
	errTLV  *tlv.ErrorTLV
	cookie  []byte
	kinds   []byte
}

func viewTLVs(m *tlv.Message) []tlvView {
	ts := m.TLVs()
	vs := make([]tlvView, 0, len(ts))
	for _, t := range ts {
		vs = append(vs, viewTLV(m, t))
	}
	return vs
}

// viewTLV decodes t with the accessors of m; each type appears once in a
// message, so they find t.
func viewTLV(m *tlv.Message, t tlv.TLV) tlvView {
	v := tlvView{t: t}
	switch t.Type {
	case tlv.TypeConnect:
		if c, ok := m.Connect(); ok {
			v.connect = &c
			v.options = slices.Collect(c.ConnectOptions())
		}
	case tlv.TypeExtendedTCPHeader:
		v.options = extHeaderOptions(t.Value)
	case tlv.TypeSupportedTCPExtensions:
		v.kinds, _ = m.SupportedTCPExtensions()
	case tlv.TypeCookie:
		v.cookie, _ = m.Cookie()
	case tlv.TypeError:
		if e, ok := m.Error(); ok {
			v.errTLV = &e
		}
	}
	return v
}

// extHeaderOptions lists the options of an Extended TCP Header TLV Value
// (after its Unassigned field), up to the EOL that the padding reads as.
func extHeaderOptions(value []byte) []tlv.TCPOption {
	opts := []tlv.TCPOption{}
	if len(value) < 2 {
		return opts
	}
	for o := range tlv.HeaderOptions(value[2:]) {
		opts = append(opts, o)
	}
	return opts
}

// JSON output.

type msgJSON struct {
	Version       int             `json:"version"`
	TotalLength   int             `json:"total_length"`
	TLVs          []orderedObject `json:"tlvs"`
	TrailingBytes int             `json:"trailing_bytes"`
	Error         *msgRefusalJSON `json:"error,omitempty"`
}

type msgRefusalJSON struct {
	Code   int    `json:"code"` // -1 when no Error TLV is sent
	Name   string `json:"name"`
	Reason string `json:"reason"`
	Action string `json:"action"`
}

type msgOptionJSON struct {
	Kind int    `json:"kind"`
	Data string `json:"data"`
}

type pcapRecordJSON struct {
	Time      string  `json:"time"`
	Src       string  `json:"src"`
	Dst       string  `json:"dst"`
	SYN       bool    `json:"syn"`
	Direction string  `json:"direction"`
	Message   msgJSON `json:"message"`
}

// orderedObject is a JSON object whose keys keep their order.
type orderedObject []orderedField

type orderedField struct {
	key   string
	value any
}

func (o orderedObject) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(f.key)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(f.value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// decodeJSONLine encodes v on one line, without HTML escaping.
func decodeJSONLine(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func msgJSONOf(d *decodedMsg) msgJSON {
	j := msgJSON{
		Version:       d.version(),
		TotalLength:   d.totalLength(),
		TLVs:          []orderedObject{},
		TrailingBytes: d.trailing(),
	}
	for _, v := range viewTLVs(&d.msg) {
		j.TLVs = append(j.TLVs, tlvJSONOf(v))
	}
	if d.err != nil {
		j.Error = msgRefusalJSONOf(d.err)
	}
	return j
}

func tlvJSONOf(v tlvView) orderedObject {
	o := orderedObject{{"type", int(v.t.Type)}, {"name", v.t.Type.String()}, {"length", int(v.t.Length)}}
	switch v.t.Type {
	case tlv.TypeConnect:
		if v.connect != nil {
			o = append(o, orderedField{"port", v.connect.Port}, orderedField{"address", v.connect.Addr.String()},
				orderedField{"options", msgOptionsJSON(v.options)})
		}
	case tlv.TypeExtendedTCPHeader:
		o = append(o, orderedField{"options", msgOptionsJSON(v.options)})
	case tlv.TypeSupportedTCPExtensions:
		o = append(o, orderedField{"kinds", msgKindsJSON(v.kinds)})
	case tlv.TypeCookie:
		o = append(o, orderedField{"cookie", hex.EncodeToString(v.cookie)})
	case tlv.TypeError:
		if e := v.errTLV; e != nil {
			o = append(o, orderedField{"code", int(e.Code)}, orderedField{"code_name", e.Code.String()},
				orderedField{"value", hex.EncodeToString(e.Value)})
		}
	}
	return o
}

func msgOptionsJSON(opts []tlv.TCPOption) []msgOptionJSON {
	out := make([]msgOptionJSON, 0, len(opts))
	for _, o := range opts {
		out = append(out, msgOptionJSON{Kind: int(o.Kind), Data: hex.EncodeToString(o.Data)})
	}
	return out
}

func msgKindsJSON(kinds []byte) []int {
	out := make([]int, 0, len(kinds))
	for _, k := range kinds {
		out = append(out, int(k))
	}
	return out
}

func msgRefusalJSONOf(pe *tlv.ParseError) *msgRefusalJSON {
	r := &msgRefusalJSON{Code: int(pe.Code), Name: pe.Code.String(), Reason: pe.Reason, Action: pe.Action.String()}
	if pe.Action != tlv.ActionReply {
		r.Code, r.Name = -1, msgRefusalName(pe)
	}
	return r
}

// msgRefusalName names what the converter does: the Error code it answers
// with, or the reset or abort that sends no Error TLV.
func msgRefusalName(pe *tlv.ParseError) string {
	switch pe.Action {
	case tlv.ActionReset:
		return "reset (no Error TLV)"
	case tlv.ActionAbort:
		return "silent abort (no Error TLV)"
	}
	return errorCodeLabel(pe.Code)
}

// Human output.

// msgText renders d as dissector lines: header, one line per TLV,
// trailing bytes, refusal.
func msgText(d *decodedMsg) string {
	var b strings.Builder
	b.WriteString(msgHeaderLine(d.input) + "\n")
	for _, v := range viewTLVs(&d.msg) {
		b.WriteString("  " + tlvViewLine(v) + "\n")
	}
	if n := d.trailing(); n > 0 {
		fmt.Fprintf(&b, "  trailing bytes: %d\n", n)
	}
	if d.err != nil {
		fmt.Fprintf(&b, "  refused: %s: %s\n", msgRefusalName(d.err), d.err.Reason)
	}
	return b.String()
}

func msgHeaderLine(b []byte) string {
	switch len(b) {
	case 0:
		return "Convert: no bytes"
	case 1:
		return fmt.Sprintf("Convert v%d, header truncated to 1 byte", b[0])
	}
	s := fmt.Sprintf("Convert v%d, total length %s (%d bytes)", b[0], wordCount(b[1]), int(b[1])*tlv.WordLen)
	if len(b) < tlv.HeaderLen {
		s += fmt.Sprintf(", header truncated to %d bytes", len(b))
	}
	return s
}

func tlvViewLine(v tlvView) string {
	label, size := tlvTypeLabel(v.t.Type), wordCount(v.t.Length)
	switch {
	case v.t.Type == tlv.TypeInfo:
		return label
	case v.connect != nil:
		s := fmt.Sprintf("%s, %s: %s", label, size, v.connect.AddrPort())
		if len(v.options) > 0 {
			s += " options: " + tcpOptionsText(v.options)
		}
		return s
	case v.t.Type == tlv.TypeExtendedTCPHeader:
		return fmt.Sprintf("%s, %s: %s", label, size, orPlaceholder(tcpOptionsText(v.options), "no options"))
	case v.t.Type == tlv.TypeSupportedTCPExtensions:
		return fmt.Sprintf("%s: %s", label, orPlaceholder(tcpKindsText(v.kinds), "none"))
	case v.t.Type == tlv.TypeCookie:
		return fmt.Sprintf("%s, %s: %s", label, size, orPlaceholder(hex.EncodeToString(v.cookie), "empty"))
	case v.errTLV != nil:
		e := v.errTLV
		return fmt.Sprintf("%s: %s value %x%s", label, errorCodeLabel(e.Code), e.Value, errorValueDetail(*e))
	}
	return fmt.Sprintf("%s, %s", label, size)
}

func wordCount(n uint8) string {
	if n == 1 {
		return "1 word"
	}
	return fmt.Sprintf("%d words", n)
}

func orPlaceholder(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

// tlvTypeLabel is "Connect (10)"; names of unknown types already hold the
// number.
func tlvTypeLabel(t tlv.Type) string {
	name, num := t.String(), fmt.Sprintf("(%d)", uint8(t))
	if strings.HasSuffix(name, num) {
		return name
	}
	return name + " " + num
}

// errorCodeLabel is "Not Authorized (32)".
func errorCodeLabel(c tlv.ErrorCode) string {
	if slices.Contains(tlv.AllErrorCodes[:], c) {
		return fmt.Sprintf("%s (%d)", c, uint8(c))
	}
	return c.String()
}

// tcpOptionLabel is "MPTCP(30)", or "kind 99" for an unnamed kind.
func tcpOptionLabel(kind uint8) string {
	name := tlv.OptionName(kind)
	if name == fmt.Sprintf("kind %d", kind) {
		return name
	}
	return fmt.Sprintf("%s(%d)", name, kind)
}

func tcpOptionsText(opts []tlv.TCPOption) string {
	parts := make([]string, 0, len(opts))
	for _, o := range opts {
		s := tcpOptionLabel(o.Kind)
		if len(o.Data) > 0 {
			s += "=" + hex.EncodeToString(o.Data)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func tcpKindsText(kinds []byte) string {
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, tcpOptionLabel(k))
	}
	return strings.Join(parts, " ")
}

// errorValueDetail explains the Value of the codes whose Value means
// something.
func errorValueDetail(e tlv.ErrorTLV) string {
	switch e.Code {
	case tlv.CodeUnsupportedVersion:
		return fmt.Sprintf(" (versions %s)", strings.Trim(fmt.Sprint(e.List()), "[]"))
	case tlv.CodeMalformedMessage, tlv.CodeUnsupportedMessage:
		return fmt.Sprintf(" (echo of %d bytes)", len(e.Echo()))
	case tlv.CodeMissingCookie:
		return fmt.Sprintf(" (cookie %s)", orPlaceholder(hex.EncodeToString(e.MissingCookie()), "none"))
	case tlv.CodeUnsupportedTCPOption:
		return fmt.Sprintf(" (kinds %s)", tcpKindsText(e.List()))
	case tlv.CodeResourceExceeded, tlv.CodeNetworkFailure:
		if s := e.Backoff(); s != 0 {
			return fmt.Sprintf(" (back-off %d s)", s)
		}
		return " (back-off: default, at least 30 s)"
	case tlv.CodeDestinationUnreachable:
		return fmt.Sprintf(" (ICMP code %d)", msgByteAt(e.Value, 0))
	}
	return ""
}

// Packet captures.

// Link types (LINKTYPE_* of pcap and pcapng files).
const (
	pcapLinkNull     = 0
	pcapLinkEthernet = 1
	pcapLinkRaw12    = 12 // DLT_RAW as some systems wrote it
	pcapLinkRaw14    = 14
	pcapLinkRaw      = 101
	pcapLinkLoop     = 108
	pcapLinkSLL      = 113
	pcapLinkIPv4     = 228
	pcapLinkIPv6     = 229
	pcapLinkSLL2     = 276
	pcapSnapLimit    = 1 << 20 // longest packet read from a capture
	flowMaxPending   = 64      // out-of-order segments a stream keeps
)

// pcapSource reads packets and the link type each is framed with.
type pcapSource struct {
	read func() ([]byte, gopacket.CaptureInfo, error)
	link func(gopacket.CaptureInfo) uint32
}

func pcapLinkSupported(link uint32) bool {
	switch link {
	case pcapLinkNull, pcapLinkEthernet, pcapLinkRaw12, pcapLinkRaw14, pcapLinkRaw, pcapLinkLoop,
		pcapLinkSLL, pcapLinkIPv4, pcapLinkIPv6, pcapLinkSLL2:
		return true
	}
	return false
}

// openPcapSource reads a pcap or pcapng stream, gzip-compressed or not.
func openPcapSource(r io.Reader) (pcapSource, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(4)
	if err != nil {
		return pcapSource{}, fmt.Errorf("not a capture file: %w", err)
	}
	if magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return pcapSource{}, err
		}
		br = bufio.NewReader(gz)
		if magic, err = br.Peek(4); err != nil {
			return pcapSource{}, fmt.Errorf("not a capture file: %w", err)
		}
	}
	if binary.BigEndian.Uint32(magic) == 0x0a0d0d0a {
		return openPcapngFile(br)
	}
	return openPcapFile(br)
}

// openPcapFile reads the link type from the file header itself: pcapgo keeps
// only its low 8 bits, which turns SLL2 (276) into 20.
func openPcapFile(br *bufio.Reader) (pcapSource, error) {
	hdr, err := br.Peek(24)
	if err != nil {
		return pcapSource{}, fmt.Errorf("not a capture file: %w", err)
	}
	var order binary.ByteOrder = binary.BigEndian
	if m := binary.LittleEndian.Uint32(hdr); m == 0xa1b2c3d4 || m == 0xa1b23c4d {
		order = binary.LittleEndian
	}
	link := order.Uint32(hdr[20:24]) & 0xffff // the high bits carry FCS information
	pr, err := pcapgo.NewReader(br)
	if err != nil {
		return pcapSource{}, err
	}
	if !pcapLinkSupported(link) {
		return pcapSource{}, fmt.Errorf("unsupported link type %d", link)
	}
	pr.SetSnaplen(pcapSnapLimit)
	return pcapSource{read: pr.ReadPacketData, link: func(gopacket.CaptureInfo) uint32 { return link }}, nil
}

func openPcapngFile(r io.Reader) (pcapSource, error) {
	// pcapgo reads through g.br itself: bufio.NewReader keeps a large
	// enough *bufio.Reader as it is.
	g := &pcapngGuard{br: bufio.NewReaderSize(r, pcapngGuardWindow), order: binary.LittleEndian}
	if err := g.check(); err != nil {
		return pcapSource{}, err
	}
	var nr *pcapgo.NgReader
	err := pcapngRecover(func() (err error) {
		nr, err = pcapgo.NewNgReader(g.br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		return err
	})
	if err != nil {
		return pcapSource{}, err
	}
	read := func() (data []byte, ci gopacket.CaptureInfo, err error) {
		if err := g.check(); err != nil {
			return nil, ci, err
		}
		err = pcapngRecover(func() (err error) {
			data, ci, err = nr.ReadPacketData()
			return err
		})
		return data, ci, err
	}
	link := func(ci gopacket.CaptureInfo) uint32 {
		iface, err := nr.Interface(ci.InterfaceIndex)
		if err != nil {
			return ^uint32(0)
		}
		// pcapgo keeps only the low 8 bits of the link type: 20 is SLL2
		// (276), as LINKTYPE 20 is not assigned.
		if l := uint32(iface.LinkType); l != pcapLinkSLL2&0xff {
			return l
		}
		return pcapLinkSLL2
	}
	return pcapSource{read: read, link: link}, nil
}

// pcapngRecover runs f, turning a panic of pcapgo's pcapng reader into an
// error: it has a few on corrupt files (a zero timestamp resolution divides
// by zero).
func pcapngRecover(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("corrupt pcapng file (%v)", r)
		}
	}()
	return f()
}

// pcapngGuard looks at the blocks pcapgo is about to read: pcapgo allocates
// the captured length of a packet unchecked, so a corrupt length would ask
// for up to 4 GiB.
type pcapngGuard struct {
	br    *bufio.Reader
	order binary.ByteOrder // of the current section
}

// Block types of pcapng.
const (
	pcapngSectionHeader  = 0x0a0d0d0a
	pcapngPacket         = 2 // obsolete Packet Block
	pcapngSimplePacket   = 3
	pcapngEnhancedPacket = 6
	pcapngGuardWindow    = 1 << 16
)

// check walks the blocks up to the next packet block and refuses a packet
// longer than pcapSnapLimit or than its block. What it cannot see (the end
// of the file, blocks beyond its window) it leaves to pcapgo.
func (g *pcapngGuard) check() error {
	for off := 0; off+12 <= pcapngGuardWindow; {
		h, err := g.br.Peek(off + 12)
		if err != nil {
			return nil
		}
		typ := g.order.Uint32(h[off:])
		if typ == pcapngSectionHeader {
			g.order = binary.LittleEndian
			if binary.BigEndian.Uint32(h[off+8:]) == 0x1a2b3c4d {
				g.order = binary.BigEndian
			}
		}
		length := g.order.Uint32(h[off+4:])
		if length < 12 || length%4 != 0 {
			return fmt.Errorf("corrupt pcapng block of length %d", length)
		}
		switch typ {
		case pcapngEnhancedPacket, pcapngPacket:
			return g.checkLength(off+20, length-32)
		case pcapngSimplePacket:
			return g.checkLength(off+8, pcapSnapLimit)
		}
		off += int(length)
	}
	return nil
}

// checkLength refuses a packet length at off above limit or pcapSnapLimit.
func (g *pcapngGuard) checkLength(off int, limit uint32) error {
	h, err := g.br.Peek(off + 4)
	if err != nil {
		return nil
	}
	if n := g.order.Uint32(h[off:]); n > limit || n > pcapSnapLimit {
		return fmt.Errorf("corrupt pcapng packet of %d bytes", n)
	}
	return nil
}

// pcapLinkPayload strips the link-layer header and returns the IP packet.
func pcapLinkPayload(link uint32, b []byte) ([]byte, bool) {
	switch link {
	case pcapLinkEthernet:
		return pcapEtherPayload(b)
	case pcapLinkSLL:
		if len(b) < 16 {
			return nil, false
		}
		return pcapIPByEtherType(binary.BigEndian.Uint16(b[14:16]), b[16:])
	case pcapLinkSLL2:
		if len(b) < 20 {
			return nil, false
		}
		return pcapIPByEtherType(binary.BigEndian.Uint16(b[0:2]), b[20:])
	case pcapLinkNull, pcapLinkLoop:
		if len(b) < 4 {
			return nil, false
		}
		return b[4:], true // the address family: the IP version tells the same
	case pcapLinkRaw, pcapLinkRaw12, pcapLinkRaw14, pcapLinkIPv4, pcapLinkIPv6:
		return b, true
	}
	return nil, false
}

// pcapEtherPayload skips an Ethernet header and any VLAN tags.
func pcapEtherPayload(b []byte) ([]byte, bool) {
	if len(b) < 14 {
		return nil, false
	}
	et, rest := binary.BigEndian.Uint16(b[12:14]), b[14:]
	for (et == 0x8100 || et == 0x88a8 || et == 0x9100) && len(rest) >= 4 {
		et, rest = binary.BigEndian.Uint16(rest[2:4]), rest[4:]
	}
	return pcapIPByEtherType(et, rest)
}

func pcapIPByEtherType(et uint16, b []byte) ([]byte, bool) {
	if et != 0x0800 && et != 0x86dd {
		return nil, false
	}
	return b, true
}

// pcapPacketMeta is what a record tells about the packet carrying a message.
type pcapPacketMeta struct {
	index    int // 1-based packet number in the capture
	time     time.Time
	src, dst netip.AddrPort
	syn      bool
}

type pcapTCPPacket struct {
	pcapPacketMeta
	ack     bool
	seq     uint32
	payload []byte
	snapped bool // the capture cut the packet short
}

// parsePcapPacket decodes a TCP segment over IPv4 or IPv6.
func parsePcapPacket(link uint32, data []byte, ci gopacket.CaptureInfo) (pcapTCPPacket, bool) {
	ip, ok := pcapLinkPayload(link, data)
	if !ok || len(ip) == 0 {
		return pcapTCPPacket{}, false
	}
	first := layers.LayerTypeIPv4
	switch ip[0] >> 4 {
	case 4:
	case 6:
		first = layers.LayerTypeIPv6
	default:
		return pcapTCPPacket{}, false
	}
	pkt := gopacket.NewPacket(ip, first, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		return pcapTCPPacket{}, false
	}
	src, dst, ok := pcapIPEndpoints(pkt)
	if !ok {
		return pcapTCPPacket{}, false
	}
	return pcapTCPPacket{
		pcapPacketMeta: pcapPacketMeta{
			time: ci.Timestamp.UTC(),
			src:  netip.AddrPortFrom(src, uint16(tcp.SrcPort)),
			dst:  netip.AddrPortFrom(dst, uint16(tcp.DstPort)),
			syn:  tcp.SYN,
		},
		ack:     tcp.ACK,
		seq:     tcp.Seq,
		payload: tcp.Payload,
		snapped: ci.CaptureLength < ci.Length,
	}, true
}

// pcapIPEndpoints returns the addresses of the innermost IP header, the one
// the TCP segment belongs to.
func pcapIPEndpoints(pkt gopacket.Packet) (src, dst netip.Addr, ok bool) {
	for _, l := range pkt.Layers() {
		switch l := l.(type) {
		case *layers.IPv4:
			src, _ = netip.AddrFromSlice(l.SrcIP.To4())
			dst, _ = netip.AddrFromSlice(l.DstIP.To4())
		case *layers.IPv6:
			src, _ = netip.AddrFromSlice(l.SrcIP)
			dst, _ = netip.AddrFromSlice(l.DstIP)
		}
	}
	return src, dst, src.IsValid() && dst.IsValid()
}

// Reassembly.

// flowSegment is a segment that arrived before the bytes preceding it.
type flowSegment struct {
	off     int
	data    []byte
	snapped bool
}

// flowStream is one direction of a connection, up to its Convert message.
type flowStream struct {
	dir     msgDir
	started bool   // its SYN (or SYN+ACK) was seen
	isn     uint32 // the SYN's sequence number
	prefix  []byte // the contiguous bytes from the start of the stream
	pending []flowSegment
	first   pcapPacketMeta // the packet that carried the first byte
	sawData bool
	snapped bool // a packet of prefix was cut short by the capture
	done    bool // its message was decoded
}

// offset is where the payload of p starts in the stream: SYN data comes
// after the SYN's sequence number.
func (s *flowStream) offset(p *pcapTCPPacket) int {
	seq := p.seq
	if p.syn {
		seq++
	}
	return int(int32(seq - s.isn - 1))
}

// add files the payload of p and reports whether the prefix grew.
func (s *flowStream) add(p *pcapTCPPacket) bool {
	s.sawData = true
	off, data := s.offset(p), p.payload
	if off < 0 {
		if -off >= len(data) {
			return false // older than the stream: a keep-alive or the SYN itself
		}
		data, off = data[-off:], 0
	}
	if off > len(s.prefix) {
		s.park(flowSegment{off: off, data: data, snapped: p.snapped})
		return false
	}
	empty := len(s.prefix) == 0
	if !s.extend(flowSegment{off: off, data: data, snapped: p.snapped}) {
		return false
	}
	if empty {
		s.first = p.pcapPacketMeta
	}
	s.drain()
	return true
}

// extend appends what seg adds to the prefix; seg starts inside or right
// after it.
func (s *flowStream) extend(seg flowSegment) bool {
	end := seg.off + len(seg.data)
	if end <= len(s.prefix) {
		return false
	}
	s.prefix = append(s.prefix, seg.data[len(s.prefix)-seg.off:]...)
	s.snapped = s.snapped || seg.snapped
	return true
}

// park keeps an out-of-order segment that can hold message bytes.
func (s *flowStream) park(seg flowSegment) {
	if seg.off >= tlv.MaxMessageLen || len(s.pending) >= flowMaxPending {
		return
	}
	seg.data = bytes.Clone(seg.data)
	s.pending = append(s.pending, seg)
}

// drain moves the parked segments the prefix now reaches into it.
func (s *flowStream) drain() {
	for {
		i := slices.IndexFunc(s.pending, func(p flowSegment) bool { return p.off <= len(s.prefix) })
		if i < 0 {
			return
		}
		seg := s.pending[i]
		s.pending = slices.Delete(s.pending, i, i+1)
		s.extend(seg)
	}
}

type flowKey struct{ a, b netip.AddrPort }

func flowKeyOf(x, y netip.AddrPort) flowKey {
	if x.Compare(y) > 0 {
		x, y = y, x
	}
	return flowKey{x, y}
}

// flowConn is a TCP connection seen from its Client's SYN.
type flowConn struct {
	index   int // packet number of the SYN
	client  netip.AddrPort
	streams [2]flowStream // by msgDir
}

// pcapRecord is one decoded message of a capture.
type pcapRecord struct {
	meta pcapPacketMeta
	dir  msgDir
	msg  *decodedMsg
}

// flowTracker follows the TCP connections of a capture.
type flowTracker struct {
	conns   map[flowKey]*flowConn
	records []pcapRecord
	warn    io.Writer
}

func newFlowTracker(warn io.Writer) *flowTracker {
	return &flowTracker{conns: map[flowKey]*flowConn{}, warn: warn}
}

func (t *flowTracker) packet(p *pcapTCPPacket) {
	c := t.connFor(p)
	if c == nil {
		return
	}
	dir := msgReply
	if p.src == c.client {
		dir = msgRequest
	}
	s := &c.streams[dir]
	if p.syn && !s.started {
		s.started, s.isn = true, p.seq
	}
	if s.done || len(p.payload) == 0 {
		return
	}
	if !s.started {
		s.sawData = true // data whose stream start is unknown: finish warns
		return
	}
	if s.add(p) {
		t.try(s)
	}
}

// connFor finds the connection of p; a Client SYN with a new initial
// sequence number starts a new one on the same addresses.
func (t *flowTracker) connFor(p *pcapTCPPacket) *flowConn {
	key := flowKeyOf(p.src, p.dst)
	c := t.conns[key]
	if !p.syn || p.ack {
		return c
	}
	if c != nil && c.client == p.src && c.streams[msgRequest].isn == p.seq {
		return c // a retransmitted SYN
	}
	if c != nil {
		t.finish(c)
	}
	c = &flowConn{index: p.index, client: p.src}
	c.streams[msgRequest].dir, c.streams[msgReply].dir = msgRequest, msgReply
	t.conns[key] = c
	return c
}

// try decodes the prefix once it holds the whole message, or as much as
// decides that the message is refused.
func (t *flowTracker) try(s *flowStream) {
	d := decodeMessage(s.prefix, s.dir)
	if d.err != nil && d.err.Truncated {
		return
	}
	t.emit(s, d)
}

func (t *flowTracker) emit(s *flowStream, d *decodedMsg) {
	t.records = append(t.records, pcapRecord{meta: s.first, dir: s.dir, msg: d})
	s.done, s.prefix, s.pending = true, nil, nil
}

// finish decodes what a connection's streams hold at its end.
func (t *flowTracker) finish(c *flowConn) {
	for i := range c.streams {
		s := &c.streams[i]
		switch {
		case s.done || !s.sawData:
		case len(s.prefix) == 0:
			fmt.Fprintf(t.warn, "converter: warning: connection from %s (packet %d): "+
				"the start of the %s stream was not captured\n", c.client, c.index, s.dir)
		default:
			if s.snapped {
				fmt.Fprintf(t.warn, "converter: warning: %s -> %s: the capture cut the %s message short (snap length)\n",
					s.first.src, s.first.dst, s.dir)
			}
			t.emit(s, decodeMessage(s.prefix, s.dir))
		}
	}
}

// close ends every connection and returns the records in capture order.
func (t *flowTracker) close() []pcapRecord {
	cs := slices.SortedFunc(maps.Values(t.conns), func(a, b *flowConn) int { return cmp.Compare(a.index, b.index) })
	for _, c := range cs {
		t.finish(c)
	}
	t.conns = map[flowKey]*flowConn{}
	slices.SortStableFunc(t.records, func(a, b pcapRecord) int { return cmp.Compare(a.meta.index, b.meta.index) })
	return t.records
}

func decodePcap(path string, asJSON bool, std stdio) error {
	in, closeIn, err := openPcapInput(path, std)
	if err != nil {
		return usageError("decode: %v", err)
	}
	defer closeIn()
	c, err := openPcapSource(in)
	if err != nil {
		return usageError("decode: %s: %v", path, err)
	}
	t := newFlowTracker(std.err)
	readErr := readPcapSource(c, t, std.err)
	recs := t.close()
	if err := writePcapRecords(std.out, recs, asJSON); err != nil {
		return err
	}
	if readErr != nil {
		return usageError("decode: %s: %v", path, readErr)
	}
	if len(recs) == 0 {
		fmt.Fprintf(std.err, "converter: %s: no TCP connection with a captured SYN carries data\n", path)
	}
	return decodeExit(slices.ContainsFunc(recs, func(r pcapRecord) bool { return r.msg.err != nil }))
}

func openPcapInput(path string, std stdio) (io.Reader, func(), error) {
	if path == "-" {
		return std.in, func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}

// readPcapSource feeds every TCP packet to t. A capture cut in the middle of
// a packet (a capture that was killed) ends with a warning.
func readPcapSource(c pcapSource, t *flowTracker, warn io.Writer) error {
	unsupported := map[uint32]bool{}
	for i := 1; ; i++ {
		data, ci, err := c.read()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, io.ErrUnexpectedEOF):
			fmt.Fprintf(warn, "converter: warning: the capture ends inside packet %d\n", i)
			return nil
		case err != nil:
			return fmt.Errorf("packet %d: %w", i, err)
		}
		link := c.link(ci)
		if !pcapLinkSupported(link) && !unsupported[link] {
			unsupported[link] = true
			fmt.Fprintf(warn, "converter: warning: packets of link type %d skipped\n", link)
		}
		if p, ok := parsePcapPacket(link, data, ci); ok {
			p.index = i
			t.packet(&p)
		}
	}
}

func writePcapRecords(w io.Writer, recs []pcapRecord, asJSON bool) error {
	var b bytes.Buffer
	for _, r := range recs {
		if !asJSON {
			b.WriteString(pcapRecordText(r))
			continue
		}
		line, err := decodeJSONLine(pcapRecordJSONOf(r))
		if err != nil {
			return err
		}
		b.Write(line)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// pcapTimeFormat is RFC 3339 with nine fractional digits, so that times sort as
// strings.
const pcapTimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

func pcapRecordJSONOf(r pcapRecord) pcapRecordJSON {
	return pcapRecordJSON{
		Time:      r.meta.time.UTC().Format(pcapTimeFormat),
		Src:       r.meta.src.String(),
		Dst:       r.meta.dst.String(),
		SYN:       r.meta.syn,
		Direction: r.dir.String(),
		Message:   msgJSONOf(r.msg),
	}
}

func pcapRecordText(r pcapRecord) string {
	syn := ""
	if r.meta.syn {
		syn = " [SYN]"
	}
	return fmt.Sprintf("%s %s -> %s %s%s\n%s", r.meta.time.UTC().Format(pcapTimeFormat),
		r.meta.src, r.meta.dst, r.dir, syn, msgText(r.msg))
}
