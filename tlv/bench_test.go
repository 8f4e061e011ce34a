package tlv

import "testing"

// BenchmarkParseConnect measures the converter's hot path: parsing and
// validating a Connect request with application data behind it.
func BenchmarkParseConnect(b *testing.B) {
	in := vectorByID(b, "A2")
	var m Message
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := ValidateRequest(in, &m, ReferenceOptions); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseExtendedConnect is the same with a TCP Options field.
func BenchmarkParseExtendedConnect(b *testing.B) {
	in := vectorByID(b, "A5")
	var m Message
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ValidateRequest(in, &m, ReferenceOptions); err != nil {
			b.Fatal(err)
		}
	}
}

func TestParseConnectAllocatesNothing(t *testing.T) {
	for _, id := range []string{"A2", "A5", "A8"} {
		in := vectorByID(t, id)
		var m Message
		allocs := testing.AllocsPerRun(100, func() {
			if _, err := ValidateRequest(in, &m, ReferenceOptions); err != nil {
				t.Fatal(err)
			}
			if c, ok := m.Connect(); !ok || c.Port == 0 {
				t.Fatal("no connect")
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per parse, want 0", id, allocs)
		}
	}
}
