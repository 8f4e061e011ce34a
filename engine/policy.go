package engine

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/convert-tc/converter/internal/addrpolicy"
	"github.com/convert-tc/converter/tlv"
)

// admit applies the policy steps of the validation order (spec §7): 9 the
// cookie, 10 the destination, 11 authorisation, 12 the TCP options, 13 the
// resources (the per-client ones were taken at accept).
func (s *Server) admit(m *tlv.Message, client netip.Addr) *refusal {
	if r := s.checkCookie(m, client); r != nil {
		return r
	}
	if err := m.CheckDestination(); err != nil {
		return fromParse(err)
	}
	if r := s.authorize(m, client); r != nil {
		return r
	}
	if err := m.CheckConnectOptions(s.cfg.SupportedOptions); err != nil {
		return fromParse(err)
	}
	return s.reserve()
}

func (s *Server) checkCookie(m *tlv.Message, client netip.Addr) *refusal {
	keys := s.cfg.Cookies
	if keys == nil {
		return nil // not in cookie mode: a Cookie TLV is ignored
	}
	got, ok := m.Cookie()
	if !ok {
		fresh := append([]byte{0}, keys.Make(client)...)
		return refuse(tlv.CodeMissingCookie, fresh, "no cookie from %s", client)
	}
	if !keys.Valid(client, got) {
		return refuse(tlv.CodeNotAuthorized, nil, "invalid cookie from %s", client)
	}
	return nil
}

func (s *Server) authorize(m *tlv.Message, client netip.Addr) *refusal {
	if len(s.pol().AllowClients) > 0 && !contains(s.pol().AllowClients, client) {
		return refuse(tlv.CodeNotAuthorized, nil, "client %s not allowed", client)
	}
	c, ok := m.Connect()
	if !ok {
		return nil
	}
	if contains(s.pol().Deny, c.Addr) {
		return refuse(tlv.CodeNotAuthorized, nil, "destination %s denied", c.Addr)
	}
	if rg, ok := addrpolicy.Special(c.Addr); ok && !contains(s.pol().AllowDestinations, c.Addr) {
		return refuse(tlv.CodeNotAuthorized, nil, "destination %s is special-purpose: %s, %s (--allow-destinations opens it)", c.Addr, rg.Name, rg.Ref)
	}
	if s.cfg.NAT != nil && !s.cfg.Hairpin && s.cfg.NAT.Contains(c.Addr) {
		return refuse(tlv.CodeNotAuthorized, nil, "destination %s is in the shared pool and hairpinning is off", c.Addr)
	}
	if s.own.has(c.Addr) {
		// Never connect to ourselves: that loops through the converter.
		return refuse(tlv.CodeNotAuthorized, nil, "destination %s is the converter's own address", c.Addr)
	}
	// The pool prefix, AnyIP routes and anything else this host answers
	// for are ways into the host's own services.
	if kind := s.routes.Kind(c.Addr); kind != addrpolicy.RouteUnicast {
		return refuse(tlv.CodeNotAuthorized, nil, "destination %s is routed %s on the converter", c.Addr, kind)
	}
	return nil
}

func contains(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// reserve refuses with Resource Exceeded when the converter is at its
// session limit.
func (s *Server) reserve() *refusal {
	p := s.pol()
	if n := s.active.Load(); n > int64(p.MaxSessions) {
		return refuse(tlv.CodeResourceExceeded, []byte{p.Backoff}, "%d sessions, limit %d", n, p.MaxSessions)
	}
	return nil
}

// ownAddrs is the set of this host's addresses, refreshed now and then so
// that addresses added after start are refused too.
type ownAddrs struct {
	mu      sync.Mutex
	addrs   map[netip.Addr]bool
	fetched time.Time
}

const ownAddrsMaxAge = 5 * time.Second

func (o *ownAddrs) has(a netip.Addr) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.addrs == nil || time.Since(o.fetched) > ownAddrsMaxAge {
		o.refresh()
	}
	return o.addrs[a.Unmap()]
}

func (o *ownAddrs) refresh() {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil && o.addrs != nil {
		return // keep the last good set
	}
	m := make(map[netip.Addr]bool, len(ifAddrs))
	for _, ia := range ifAddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			m[p.Addr().Unmap()] = true
		}
	}
	o.addrs, o.fetched = m, time.Now()
}
