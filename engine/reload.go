package engine

import (
	"net/netip"
)

// Policy is the part of Config that can change while the Server runs (a
// reload): who may use the converter, which destinations, and the limits.
// Everything else needs a restart.
type Policy struct {
	AllowClients, Deny, AllowDestinations []netip.Prefix

	MaxSessions, MaxPendingPerClient, MaxSessionsPerClient, MaxHandshakes, RatePerClient int
	Backoff                                                                              uint8
}

// Policy returns the reloadable part of c.
func (c Config) Policy() Policy {
	return Policy{
		AllowClients: c.AllowClients, Deny: c.Deny, AllowDestinations: c.AllowDestinations,
		MaxSessions: c.MaxSessions, MaxPendingPerClient: c.MaxPendingPerClient,
		MaxSessionsPerClient: c.MaxSessionsPerClient, MaxHandshakes: c.MaxHandshakes,
		RatePerClient: c.RatePerClient, Backoff: c.Backoff,
	}
}

// withPolicy returns c with p's fields.
func (c Config) withPolicy(p Policy) Config {
	c.AllowClients, c.Deny, c.AllowDestinations = p.AllowClients, p.Deny, p.AllowDestinations
	c.MaxSessions, c.MaxPendingPerClient = p.MaxSessions, p.MaxPendingPerClient
	c.MaxSessionsPerClient, c.MaxHandshakes = p.MaxSessionsPerClient, p.MaxHandshakes
	c.RatePerClient, c.Backoff = p.RatePerClient, p.Backoff
	return c
}

// SetPolicy puts p in force for every session admitted from now on, with
// unset fields at their defaults; running sessions keep going. A policy
// that fails validation changes nothing.
func (s *Server) SetPolicy(p Policy) error {
	cfg := s.cfg.withPolicy(p).WithDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	np := cfg.Policy()
	s.policy.Store(&np)
	s.clients.setLimits(cfg)
	return nil
}

// pol is the policy in force.
func (s *Server) pol() *Policy { return s.policy.Load() }
