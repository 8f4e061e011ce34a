package bpf

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
)

// SteeringConfig is fixed when the steer program is loaded.
type SteeringConfig struct {
	// Mark is put on steered SYNs and on every packet of a locally
	// terminated flow; an `ip rule fwmark Mark` must route it to a
	// `local` route. Must not be 0.
	Mark uint32
	// Port is the converter's transparent listener port. A SYN to steer
	// goes first to a listener on its own destination port, if the
	// namespace has one (joins need that: the kernel accepts a join only
	// on its connection's local port), else to Port. Must not be 0.
	//
	// Every listener on a port that Convert SYNs may be addressed to must
	// therefore be the converter's IP_TRANSPARENT one: a SYN assigned to
	// an ordinary listener (sshd on :22, say) is dropped by the kernel
	// (TcpExtListenDrops), and the client's retransmission then reaches
	// the real server with the Convert message as plain data.
	Port uint16
	// MaxTokens bounds the MP_JOIN token map; 0 keeps the default, 65536.
	MaxTokens uint32
}

// Steering is the loaded steer program.
type Steering struct {
	objs  steerObjects
	links tcxLinks
	once  sync.Once
}

// steerCounterNames is indexed by the C enum steer_counter.
var steerCounterNames = []string{
	steerSteerCounterSTEER_STEERED:       "steered",
	steerSteerCounterSTEER_JOINS_STEERED: "joins_steered",
	steerSteerCounterSTEER_PASSED:        "passed",
	steerSteerCounterSTEER_EST_MARKED:    "est_marked",
	steerSteerCounterSTEER_LOOKUP_FAILED: "lookup_failed",
	steerSteerCounterSTEER_ASSIGN_FAILED: "assign_failed",
}

// LoadSteering loads the steer program into the kernel. It attaches
// nowhere until Attach is called.
func LoadSteering(cfg SteeringConfig) (*Steering, error) {
	if cfg.Mark == 0 {
		return nil, errors.New("load steer program: mark must not be 0")
	}
	if cfg.Port == 0 {
		return nil, errors.New("load steer program: converter port must not be 0")
	}
	spec, err := loadSteer()
	if err != nil {
		return nil, fmt.Errorf("load steer program: %w", err)
	}
	if err := checkSteerSpec(spec); err != nil {
		return nil, fmt.Errorf("load steer program: %w", err)
	}
	if cfg.MaxTokens != 0 {
		spec.Maps[steerMapTokens].MaxEntries = cfg.MaxTokens
	}
	if err := spec.Variables[steerVarMark].Set(cfg.Mark); err != nil {
		return nil, fmt.Errorf("load steer program: set mark: %w", err)
	}
	if err := spec.Variables[steerVarConverterPort].Set(cfg.Port); err != nil {
		return nil, fmt.Errorf("load steer program: set converter port: %w", err)
	}
	s := &Steering{}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("load steer program: %w", err)
	}
	s.links.prog = s.objs.Steer
	return s, nil
}

func checkSteerSpec(spec *ebpf.CollectionSpec) error {
	if err := checkCounters(spec, steerMapSteerCounters, steerCounterNames); err != nil {
		return err
	}
	return checkMap(spec, steerMapTokens, uint32(0), uint8(0))
}

// Attach attaches the program at tcx ingress of the interface with this
// index in the calling thread's network namespace (lock the thread and
// enter the namespace first, e.g. with lab.RunIn).
func (s *Steering) Attach(ifindex int) error { return s.links.attach(ifindex) }

// Detach removes the program from the interface with this index in the
// calling thread's network namespace.
func (s *Steering) Detach(ifindex int) error { return s.links.detach(ifindex) }

// AddToken lets MP_JOIN SYNs carrying this token be steered. token is the
// local token in host order, as MPTCP_INFO's mptcpi_token gives it.
func (s *Steering) AddToken(token uint32) error {
	if err := s.objs.Tokens.Update(tokenKey(token), uint8(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add mptcp token %#08x: %w", token, err)
	}
	return nil
}

// RemoveToken forgets a token; a token that is not there is not an error.
func (s *Steering) RemoveToken(token uint32) error {
	err := s.objs.Tokens.Delete(tokenKey(token))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove mptcp token %#08x: %w", token, err)
	}
	return nil
}

// Counters returns the program's counters summed over all CPUs: steered,
// joins_steered (included in steered), passed, est_marked, lookup_failed
// and assign_failed.
func (s *Steering) Counters() (map[string]uint64, error) {
	return sumCounters(s.objs.SteerCounters, steerCounterNames)
}

// Status lists the program, its links and the token map's fill level.
func (s *Steering) Status() (Status, error) {
	st := Status{ProgramID: programID(s.objs.Steer), Links: s.links.status()}
	tokens, err := mapStatus(steerMapTokens, s.objs.Tokens)
	st.Maps = append(st.Maps, tokens)
	return st, err
}

// Close detaches every link and unloads the program and its maps.
func (s *Steering) Close() error {
	err := ErrClosed
	s.once.Do(func() {
		err = errors.Join(s.links.close(), s.objs.Close())
	})
	return err
}
