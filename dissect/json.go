package dissect

import (
	"bytes"
	"encoding/hex"
	"encoding/json"

	"github.com/convert-tc/converter/tlv"
)

// JSON is the message as one JSON object on one line, without a newline
// and without HTML escaping:
//
//	{"version","total_length","tlvs":[...],"trailing_bytes","error"}
//
// Each TLV object starts with "type", "name" and "length" (in words),
// followed by the fields of its type. "error" is present only for a
// refused message: {"code","name","reason","action"}, code -1 when the
// receiver resets or aborts without an Error TLV.
func (m *Message) JSON() ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(messageJSONOf(m)); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// MarshalJSON is JSON, so that a Message nests in other JSON values.
func (m *Message) MarshalJSON() ([]byte, error) { return m.JSON() }

type messageJSON struct {
	Version       int             `json:"version"`
	TotalLength   int             `json:"total_length"`
	TLVs          []orderedObject `json:"tlvs"`
	TrailingBytes int             `json:"trailing_bytes"`
	Error         *refusalJSON    `json:"error,omitempty"`
}

type refusalJSON struct {
	Code   int    `json:"code"` // -1 when no Error TLV is sent
	Name   string `json:"name"`
	Reason string `json:"reason"`
	Action string `json:"action"`
}

type optionJSON struct {
	Kind int    `json:"kind"`
	Data string `json:"data"`
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

func messageJSONOf(m *Message) messageJSON {
	j := messageJSON{
		Version:       m.Version(),
		TotalLength:   m.TotalLength(),
		TLVs:          []orderedObject{},
		TrailingBytes: m.TrailingBytes(),
	}
	for _, v := range viewTLVs(&m.msg) {
		j.TLVs = append(j.TLVs, tlvJSONOf(v))
	}
	if m.err != nil {
		j.Error = refusalJSONOf(m.err)
	}
	return j
}

func tlvJSONOf(v tlvView) orderedObject {
	o := orderedObject{{"type", int(v.t.Type)}, {"name", v.t.Type.String()}, {"length", int(v.t.Length)}}
	switch v.t.Type {
	case tlv.TypeConnect:
		if v.connect != nil {
			o = append(o, orderedField{"port", v.connect.Port}, orderedField{"address", v.connect.Addr.String()},
				orderedField{"options", optionsJSON(v.options)})
		}
	case tlv.TypeExtendedTCPHeader:
		o = append(o, orderedField{"options", optionsJSON(v.options)})
	case tlv.TypeSupportedTCPExtensions:
		o = append(o, orderedField{"kinds", kindsJSON(v.kinds)})
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

func optionsJSON(opts []tlv.TCPOption) []optionJSON {
	out := make([]optionJSON, 0, len(opts))
	for _, o := range opts {
		out = append(out, optionJSON{Kind: int(o.Kind), Data: hex.EncodeToString(o.Data)})
	}
	return out
}

func kindsJSON(kinds []byte) []int {
	out := make([]int, 0, len(kinds))
	for _, k := range kinds {
		out = append(out, int(k))
	}
	return out
}

func refusalJSONOf(pe *tlv.ParseError) *refusalJSON {
	r := &refusalJSON{Code: int(pe.Code), Name: pe.Code.String(), Reason: pe.Reason, Action: pe.Action.String()}
	if pe.Action != tlv.ActionReply {
		r.Code, r.Name = -1, refusalName(pe)
	}
	return r
}
