package session

import (
	"encoding/json"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"testing"

	"github.com/convert-tc/converter/internal/mptcpevents"
)

// The contract of `converter sessions --json`: these keys with these JSON
// types must stay; others may be added (and are listed so that a rename
// is caught too).
var (
	sessionKeys = map[string]string{
		"id": "number", "token": "string", "client": "string", "destination": "string",
		"upstream": "object", "state": "string", "bytes_to_server": "number",
		"bytes_to_client": "number", "fallback": "bool", "subflows": "array",
	}
	sessionExtras = []string{
		"client_local", "original_destination", "syn_ack_options", "started", "last_activity",
		"error_code", "error", "mptcp", "server_tcp", "announced", "refresh_error",
	}
	upstreamKeys = map[string]string{"local": "string", "remote": "string"}
	subflowKeys  = map[string]string{
		"local": "string", "remote": "string", "bytes_sent": "number",
		"bytes_received": "number", "rtt_us": "number", "backup": "bool",
	}
	subflowExtras = []string{"retransmits", "initial", "local_id", "remote_id", "if_index"}
)

var addrPortRE = regexp.MustCompile(`^(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):\d+$`)

func jsonType(v any) string {
	switch v.(type) {
	case float64:
		return "number"
	case string:
		return "string"
	case bool:
		return "bool"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "null"
}

// checkKeys checks that obj has every key of want with its type, and no
// key outside want and extras.
func checkKeys(t *testing.T, what string, obj map[string]any, want map[string]string, extras []string) {
	t.Helper()
	for k, typ := range want {
		v, ok := obj[k]
		if !ok {
			t.Errorf("%s: key %q missing", what, k)
		} else if got := jsonType(v); got != typ {
			t.Errorf("%s: %q is a JSON %s, want %s", what, k, got, typ)
		}
	}
	for k := range obj {
		if _, ok := want[k]; !ok && !slices.Contains(extras, k) {
			t.Errorf("%s: unexpected key %q (all keys: %v)", what, k, slices.Sorted(maps.Keys(obj)))
		}
	}
}

func TestSnapshotJSONContract(t *testing.T) {
	tb := NewTable(0)
	e := addToken(t, tb, 42, 0x0000beef)
	up, _ := pair(t, false)
	e.SetDestination(netip.MustParseAddrPort("[::ffff:192.0.2.7]:443"))
	e.SetServer(up)
	e.SetState(StateEstablished)
	e.Count(Client, 3)
	tb.HandleEvent(mptcpevents.Event{Type: mptcpevents.SubEstablished, Token: 0xbeef,
		Local: netip.MustParseAddrPort("[fd01:1::1]:5124"), Remote: netip.MustParseAddrPort("[fd01:2::2]:4000"), Backup: true})
	c, _ := pair(t, false)
	if _, err := tb.Add(Accepted{ID: 43, Client: c}); err != nil { // plain TCP, nothing set yet
		t.Fatal(err)
	}

	b, err := json.Marshal(tb.Snapshot(false))
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	checkKeys(t, "top", top, map[string]string{"sessions": "array"}, nil)
	sessions, _ := top["sessions"].([]any)
	if len(sessions) != 2 {
		t.Fatalf("%d sessions in %s", len(sessions), b)
	}
	for i, s := range sessions {
		obj := s.(map[string]any)
		checkKeys(t, "session", obj, sessionKeys, sessionExtras)
		checkKeys(t, "upstream", obj["upstream"].(map[string]any), upstreamKeys, nil)
		subs, _ := obj["subflows"].([]any)
		if len(subs) == 0 {
			t.Errorf("session %d: no subflows in %s", i, b)
		}
		for _, sf := range subs {
			sfo := sf.(map[string]any)
			checkKeys(t, "subflow", sfo, subflowKeys, subflowExtras)
			for _, k := range []string{"local", "remote"} {
				if s := sfo[k].(string); !addrPortRE.MatchString(s) {
					t.Errorf("subflow %s %q is not ip:port", k, s)
				}
			}
		}
		if !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(obj["token"].(string)) {
			t.Errorf("token %q is not 8 hex digits", obj["token"])
		}
		if !addrPortRE.MatchString(obj["client"].(string)) {
			t.Errorf("client %q is not ip:port", obj["client"])
		}
	}
	first := sessions[0].(map[string]any)
	if first["token"] != "0000beef" || first["destination"] != "192.0.2.7:443" || first["state"] != "established" ||
		first["id"] != float64(42) || first["bytes_to_server"] != float64(3) {
		t.Errorf("first session: %s", b)
	}
	if second := sessions[1].(map[string]any); second["destination"] != "" || second["state"] != "connecting" || second["fallback"] != true {
		t.Errorf("second session: %s", b)
	}

	// And back: a client decoding the JSON gets the same values.
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("decode snapshot: %v", err)
	}
	if back.Sessions[0].Token != 0xbeef || back.Sessions[0].State != StateEstablished || !back.Sessions[0].Subflows[1].Backup {
		t.Errorf("round trip: %+v", back.Sessions[0])
	}
}

func TestEmptySnapshotJSON(t *testing.T) {
	b, err := json.Marshal(NewTable(1).Snapshot(true))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"sessions":[]}` {
		t.Errorf("empty table encodes as %s", b)
	}
}
