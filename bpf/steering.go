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
	// goes to the listener on its own destination port if that port was
	// registered with AddListenerPort and the namespace has a listener
	// there (joins need that: the kernel accepts a join only on its
	// connection's local port), else to Port. Must not be 0.
	//
	// Listeners on unregistered ports are never used: a SYN assigned to an
	// ordinary, non-transparent listener (sshd on :22, say) would be
	// dropped by the kernel (TcpExtListenDrops), and the client's
	// retransmission would then reach the real server with the Convert
	// message as plain data.
	Port uint16
	// MaxTokens sizes the MP_JOIN token map (max_entries); 0 keeps the
	// default, 65536. The engine holds one token per session, so the
	// daemon passes its session limit. The map is not preallocated: the
	// size costs only its bucket array (about 16 bytes per entry rounded
	// up to a power of two) until tokens are added.
	MaxTokens uint32
	// Inherit are a predecessor's maps and links (Steering.HandOver):
	// the program shares its token and port maps and counters, and takes
	// its links over in place.
	Inherit []Object
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
	steerSteerCounterSTEER_TIME_WAIT:     "time_wait",
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
	maps, err := inheritMaps(spec, cfg.Inherit, steerMapTokens, steerMapListenerPorts, steerMapSteerCounters)
	if err != nil {
		return nil, fmt.Errorf("load steer program: %w", err)
	}
	defer closeMaps(maps)
	s := &Steering{}
	if err := spec.LoadAndAssign(&s.objs, &ebpf.CollectionOptions{MapReplacements: maps}); err != nil {
		return nil, fmt.Errorf("load steer program: %w", err)
	}
	s.links.prog = s.objs.Steer
	if err := s.links.adopt(cfg.Inherit); err != nil {
		s.Close()
		return nil, fmt.Errorf("load steer program: %w", err)
	}
	return s, nil
}

// HandOver duplicates the maps and links for a successor process.
func (s *Steering) HandOver() ([]Object, error) {
	return handOver(map[string]*ebpf.Map{
		steerMapTokens: s.objs.Tokens, steerMapListenerPorts: s.objs.ListenerPorts, steerMapSteerCounters: s.objs.SteerCounters,
	}, &s.links)
}

func checkSteerSpec(spec *ebpf.CollectionSpec) error {
	if err := checkCounters(spec, steerMapSteerCounters, steerCounterNames); err != nil {
		return err
	}
	if err := checkMap(spec, steerMapTokens, uint32(0), uint8(0)); err != nil {
		return err
	}
	return checkMap(spec, steerMapListenerPorts, uint16(0), uint8(0))
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

// AddListenerPort registers a port (host order) on which the converter
// listens with its own IP_TRANSPARENT MPTCP listener: Convert and MP_JOIN
// SYNs addressed to this port are then assigned to the listener on it,
// when there is one, instead of to the configured Port. Call it once the
// listener is open; registering a port twice is not an error.
func (s *Steering) AddListenerPort(port uint16) error {
	if port == 0 {
		return errors.New("add listener port: port must not be 0")
	}
	if err := s.objs.ListenerPorts.Update(port, uint8(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add listener port %d: %w", port, err)
	}
	return nil
}

// RemoveListenerPort unregisters a port, typically before its listener
// closes; a port that is not registered is not an error.
func (s *Steering) RemoveListenerPort(port uint16) error {
	err := s.objs.ListenerPorts.Delete(port)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove listener port %d: %w", port, err)
	}
	return nil
}

// Counters returns the program's counters summed over all CPUs: steered,
// joins_steered (included in steered), passed, est_marked, lookup_failed,
// assign_failed, and time_wait (packets matching a local TIME_WAIT socket,
// left unmarked; also counted in passed or steered).
func (s *Steering) Counters() (map[string]uint64, error) {
	return sumCounters(s.objs.SteerCounters, steerCounterNames)
}

// Status lists the program, its links and the fill levels of its token
// map and its listener port map, in that order.
func (s *Steering) Status() (Status, error) {
	st := Status{ProgramID: programID(s.objs.Steer), Links: s.links.status()}
	tokens, err := mapStatus(steerMapTokens, s.objs.Tokens)
	ports, perr := mapStatus(steerMapListenerPorts, s.objs.ListenerPorts)
	st.Maps = append(st.Maps, tokens, ports)
	return st, errors.Join(err, perr)
}

// Close detaches every link and unloads the program and its maps.
func (s *Steering) Close() error {
	err := ErrClosed
	s.once.Do(func() {
		err = errors.Join(s.links.close(), s.objs.Close())
	})
	return err
}
