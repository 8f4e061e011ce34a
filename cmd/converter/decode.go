package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/capture"
	"github.com/convert-tc/converter/dissect"
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

A request that rides in the Client's SYN with a Connect TLV is followed by a
handshake record: the times, after the Client's SYN, of the server-leg SYN
(the converter's SYN to the Connect destination), of the server's SYN+ACK and
of the converter's SYN+ACK to the Client, or "not captured". "held" means the
converter answered the Client at or after the server answered it, as
--syn-hold does; capture both legs in one file (tcpdump -i any in the
converter's namespace). The server leg is the first connection opened to the
destination after the Client's SYN that is neither a Client's own (in
transparent mode a Client addresses the destination itself) nor the leg of
an earlier Client, so concurrent Clients of one destination take the legs in
order. Handshake records leave the exit status as it is.

Exit status: 0 when every message is valid, 1 when the converter (or, for a
reply, the Client) would refuse one, 2 on usage or file errors.

JSON: --hex prints one message object, with the converter's version in
"converter_version" ("version" is the message's); --pcap prints one record
per line: {"version","time","src","dst","syn","direction","message"},
version the converter's, time in RFC 3339 UTC with nine fractional digits,
src and dst those of the packet that carries the first byte of the message.
A handshake record is {"version","kind":"handshake","client","converter",
"destination","client_syn","server_syn","server_synack","client_synack",
"held"}: converter is the address the Client's SYN went to, the times are
formatted as "time" or null when not captured, and held is true when both
SYN+ACKs were captured and the Client's left at or after the server's.
Message records have no "kind": they are those with "message".`

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
			return usageError("decode: %s", flagErrorText(err))
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
		dir := dissect.Request
		if c.Bool("reply") {
			dir = dissect.Reply
		}
		return decodeHex(c.String("hex"), dir, c.Bool("json"), std)
	}
	return usageError("decode: nothing to decode: give --hex HEX or --pcap FILE")
}

// decodeVersionKey holds the converter's version in the JSON of --hex,
// whose "version" is the message's (the Convert protocol version).
const decodeVersionKey = "converter_version"

// decodeExit is the result of a decode whose output was written.
func decodeExit(refused bool) error {
	if refused {
		return cli.Exit("", exitRefused)
	}
	return nil
}

func decodeHex(s string, dir dissect.Direction, asJSON bool, std stdio) error {
	b, err := decodeHexArg(s)
	if err != nil {
		return usageError("decode: --hex: %v", err)
	}
	m := dissect.Decode(b, dir)
	var out []byte
	if asJSON {
		// The message's own "version" is the Convert protocol's.
		out, err = decodeJSONLine(m)
		if err == nil {
			out, err = versionedRawKey(out, decodeVersionKey, "")
		}
		if err != nil {
			return err
		}
	} else {
		out = []byte(m.Text())
	}
	if _, err := std.out.Write(out); err != nil {
		return err
	}
	return decodeExit(m.Err() != nil)
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

// pcapRecord is one decoded message of a capture.
type pcapRecord struct {
	stream    capture.Stream
	dir       dissect.Direction
	msg       *dissect.Message
	handshake *pcapHandshake // printed after the message; nil for none
}

// messageDir is who sends the messages of a stream: the Client opens the
// connection to the converter.
func messageDir(d capture.Direction) dissect.Direction {
	if d == capture.FromServer {
		return dissect.Reply
	}
	return dissect.Request
}

// pcapOptions keep of each stream its Convert message: a stream is
// complete as soon as enough contiguous bytes decide the message (valid or
// refused), and no message runs past tlv.MaxMessageLen.
func pcapOptions(warn io.Writer) capture.Options {
	return capture.Options{
		Enough: func(d capture.Direction, b []byte) bool {
			return !dissect.Decode(b, messageDir(d)).Incomplete()
		},
		Limit: tlv.MaxMessageLen,
		Warn:  func(w capture.Warning) { fmt.Fprintf(warn, "converter: warning: %s\n", pcapWarningText(w)) },
	}
}

// pcapWarningText words a capture warning for Convert messages.
func pcapWarningText(w capture.Warning) string {
	switch w.Kind {
	case capture.StartMissing:
		return fmt.Sprintf("connection from %s (packet %d): the start of the %s stream was not captured",
			w.Client, w.Packet, messageDir(w.Dir))
	case capture.SnappedShort:
		return fmt.Sprintf("%s -> %s: the capture cut the %s message short (snap length)",
			w.Src, w.Dst, messageDir(w.Dir))
	}
	return w.String()
}

func decodePcap(path string, asJSON bool, std stdio) error {
	in, closeIn, err := openPcapInput(path, std)
	if err != nil {
		return usageError("decode: %v", err)
	}
	defer closeIn()
	streams, handshakes, readErr := capture.Read(in, pcapOptions(std.err))
	recs := make([]pcapRecord, 0, len(streams))
	for _, s := range streams {
		dir := messageDir(s.Dir)
		recs = append(recs, pcapRecord{stream: s, dir: dir, msg: dissect.Decode(s.Data, dir)})
	}
	matchHandshakes(recs, handshakes)
	if err := writePcapRecords(std.out, recs, asJSON); err != nil {
		return err
	}
	if readErr != nil {
		return usageError("decode: %s: %v", path, readErr)
	}
	if len(recs) == 0 {
		fmt.Fprintf(std.err, "converter: %s: no TCP connection with a captured SYN carries data\n", path)
	}
	return decodeExit(slices.ContainsFunc(recs, func(r pcapRecord) bool { return r.msg.Err() != nil }))
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

func writePcapRecords(w io.Writer, recs []pcapRecord, asJSON bool) error {
	var b bytes.Buffer
	for _, r := range recs {
		if !asJSON {
			b.WriteString(pcapRecordText(r))
			if r.handshake != nil {
				b.WriteString(r.handshake.text())
			}
			continue
		}
		line, err := versionedJSON(pcapRecordJSONOf(r), "")
		if err != nil {
			return err
		}
		b.Write(line)
		if r.handshake != nil {
			if line, err = versionedJSON(r.handshake.json(), ""); err != nil {
				return err
			}
			b.Write(line)
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// pcapTimeFormat is RFC 3339 with nine fractional digits, so that times sort as
// strings.
const pcapTimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

type pcapRecordJSON struct {
	Time      string           `json:"time"`
	Src       string           `json:"src"`
	Dst       string           `json:"dst"`
	SYN       bool             `json:"syn"`
	Direction string           `json:"direction"`
	Message   *dissect.Message `json:"message"`
}

func pcapRecordJSONOf(r pcapRecord) pcapRecordJSON {
	return pcapRecordJSON{
		Time:      r.stream.Time.UTC().Format(pcapTimeFormat),
		Src:       r.stream.Src.String(),
		Dst:       r.stream.Dst.String(),
		SYN:       r.stream.SYN,
		Direction: r.dir.String(),
		Message:   r.msg,
	}
}

func pcapRecordText(r pcapRecord) string {
	syn := ""
	if r.stream.SYN {
		syn = " [SYN]"
	}
	return fmt.Sprintf("%s %s -> %s %s%s\n%s", r.stream.Time.UTC().Format(pcapTimeFormat),
		r.stream.Src, r.stream.Dst, r.dir, syn, r.msg.Text())
}

// pcapHandshake is the opening of a Client connection whose request rode
// in its SYN, and of its server leg: the order --syn-hold sets.
type pcapHandshake struct {
	client, converter, dest netip.AddrPort
	// The Client's SYN, the server-leg SYN, the server's SYN+ACK and the
	// converter's SYN+ACK to the Client; zero when not captured.
	clientSYN, serverSYN, serverSYNACK, clientSYNACK time.Time
}

// synConnect is the Connect destination of a request in a SYN. Only such a
// request lets the converter open the server leg before it answers the
// Client, so only it has a handshake order to show.
func synConnect(r pcapRecord) (netip.AddrPort, bool) {
	if r.dir != dissect.Request || !r.stream.SYN {
		return netip.AddrPort{}, false
	}
	var m tlv.Message
	tlv.ParseRequest(r.stream.Data, &m) // m keeps the TLVs read before an error
	c, ok := m.Connect()
	return c.AddrPort(), ok
}

// matchHandshakes gives each request in a SYN with a Connect its
// handshake. Its server leg is the first connection opened to the
// destination after its SYN that no earlier Client took. Records come in
// the order of their SYNs, so each destination keeps a queue of its
// candidate legs: a leg opened before the current SYN can be no later
// Client's either, and is dropped.
func matchHandshakes(recs []pcapRecord, hs []capture.Handshake) {
	dests := map[int]netip.AddrPort{} // by index into recs
	clients := map[int]bool{}         // by index into hs
	for i, r := range recs {
		if d, ok := synConnect(r); ok {
			dests[i], clients[r.stream.Handshake] = d, true
		}
	}
	legs := map[netip.AddrPort][]int{} // indexes into hs, ascending
	for i, h := range hs {
		if !clients[i] { // in transparent mode a Client's SYN goes to the destination too
			legs[h.Server] = append(legs[h.Server], i)
		}
	}
	for i := range recs {
		dest, ok := dests[i]
		if !ok {
			continue
		}
		own := recs[i].stream.Handshake
		h := &pcapHandshake{client: hs[own].Client, converter: hs[own].Server, dest: dest,
			clientSYN: hs[own].SYNTime, clientSYNACK: hs[own].SYNACKTime}
		q := legs[dest]
		for len(q) > 0 && q[0] < own {
			q = q[1:]
		}
		if len(q) > 0 {
			h.serverSYN, h.serverSYNACK = hs[q[0]].SYNTime, hs[q[0]].SYNACKTime
			q = q[1:]
		}
		legs[dest] = q
		recs[i].handshake = h
	}
}

// held reports whether the converter answered the Client at or after the
// server answered the server leg.
func (h *pcapHandshake) held() bool {
	return !h.clientSYNACK.IsZero() && !h.serverSYNACK.IsZero() && !h.clientSYNACK.Before(h.serverSYNACK)
}

func (h *pcapHandshake) text() string {
	at := func(t time.Time) string {
		switch d := t.Sub(h.clientSYN); {
		case t.IsZero():
			return "not captured"
		case d == 0:
			return "+0"
		default:
			return fmt.Sprintf("%+.3fms", d.Seconds()*1000)
		}
	}
	verdict := "not held: the client's SYN+ACK left before the server's"
	switch {
	case h.clientSYNACK.IsZero():
		verdict = "not held: the client's SYN+ACK was not captured"
	case h.serverSYNACK.IsZero():
		verdict = "not held: the server's SYN+ACK was not captured"
	case h.held():
		verdict = "held: the client's SYN+ACK left after the server's"
	}
	return fmt.Sprintf("handshake %s -> %s via %s: client SYN %s, server-leg SYN %s, server SYN+ACK %s, client SYN+ACK %s (%s)\n",
		h.client, h.converter, h.dest, at(h.clientSYN), at(h.serverSYN), at(h.serverSYNACK), at(h.clientSYNACK), verdict)
}

type pcapHandshakeJSON struct {
	Kind         string  `json:"kind"`
	Client       string  `json:"client"`
	Converter    string  `json:"converter"`
	Destination  string  `json:"destination"`
	ClientSYN    *string `json:"client_syn"`
	ServerSYN    *string `json:"server_syn"`
	ServerSYNACK *string `json:"server_synack"`
	ClientSYNACK *string `json:"client_synack"`
	Held         bool    `json:"held"`
}

func (h *pcapHandshake) json() pcapHandshakeJSON {
	at := func(t time.Time) *string {
		if t.IsZero() {
			return nil
		}
		s := t.UTC().Format(pcapTimeFormat)
		return &s
	}
	return pcapHandshakeJSON{
		Kind: "handshake", Client: h.client.String(), Converter: h.converter.String(), Destination: h.dest.String(),
		ClientSYN: at(h.clientSYN), ServerSYN: at(h.serverSYN), ServerSYNACK: at(h.serverSYNACK), ClientSYNACK: at(h.clientSYNACK),
		Held: h.held(),
	}
}
