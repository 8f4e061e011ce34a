package engine

import (
	"fmt"
	"net"
	"os"
)

// HandedListener is a listening socket passed between processes on an
// upgrade: the same socket, so no SYN meets a closed port.
type HandedListener struct {
	File *os.File
	// Port is the port of a transparent per-port listener (joins of
	// steered connections); 0 for a configured listener.
	Port uint16
}

// HandOverListeners returns a copy of every open listening socket, for a
// successor process; the caller closes the files once sent. The Server
// keeps accepting until HandedOver.
func (s *Server) HandOverListeners() ([]HandedListener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []HandedListener
	fail := func(err error) ([]HandedListener, error) {
		for _, h := range out {
			h.File.Close()
		}
		return nil, fmt.Errorf("hand over listeners: %w", err)
	}
	for _, l := range s.listeners {
		f, err := l.File()
		if err != nil {
			return fail(err)
		}
		out = append(out, HandedListener{File: f})
	}
	for port, pl := range s.portListeners {
		if pl.l == nil {
			continue
		}
		f, err := pl.l.File()
		if err != nil {
			return fail(err)
		}
		out = append(out, HandedListener{File: f, Port: port})
	}
	return out, nil
}

// HandedOver says that a successor accepts on the sockets now. When
// Serve's context ends, every listener of this Server closes at once,
// per-port ones too and without unregistering their ports from the
// steering program (they are the successor's); what was accepted before is
// served to its end, then the Server drains as on a stop.
func (s *Server) HandedOver() { s.handedOver.Store(true) }

// adoptInherited takes the predecessor's sockets: configured listeners
// for the addresses of Listen, per-port ones held for the predecessor's
// sessions until PredecessorDone. It returns the addresses of Listen left
// to open.
func (s *Server) adoptInherited() ([]string, error) {
	var main []*net.TCPListener
	for _, h := range s.cfg.Inherited {
		l, err := fileListener(h.File)
		if err != nil {
			for _, m := range main {
				m.Close()
			}
			return nil, err
		}
		if h.Port != 0 {
			s.mu.Lock()
			s.portListeners[h.Port] = &portListener{refs: 1, l: l, ready: closedChan, inherited: true}
			s.mu.Unlock()
			continue
		}
		main = append(main, l)
	}
	var open []string
	for _, addr := range s.cfg.Listen {
		i := matchListener(main, addr)
		if i < 0 {
			open = append(open, addr)
			continue
		}
		s.addListener(main[i])
		main = append(main[:i], main[i+1:]...)
	}
	for _, l := range main {
		s.log.Info("predecessor's listener not configured here: closed", "address", l.Addr().String())
		l.Close()
	}
	return open, nil
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func fileListener(f *os.File) (*net.TCPListener, error) {
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited listener: %w", err)
	}
	tl, ok := l.(*net.TCPListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("inherited listener %v is not TCP", l.Addr())
	}
	return tl, nil
}

// matchListener finds the listener bound to addr.
func matchListener(ls []*net.TCPListener, addr string) int {
	want, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return -1
	}
	for i, l := range ls {
		got := l.Addr().(*net.TCPAddr)
		if got.Port == want.Port && got.IP.Equal(want.IP) && (got.IP.To4() == nil) == (want.IP.To4() == nil) {
			return i
		}
	}
	return -1
}

// serveInherited starts accepting on the inherited per-port listeners and
// drops the predecessor's hold on them once it is gone.
func (s *Server) serveInherited() {
	s.mu.Lock()
	ctx := s.serveCtx
	var held []uint16
	for port, pl := range s.portListeners {
		if pl.inherited {
			held = append(held, port)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.acceptLoop(ctx, pl.l)
			}()
		}
	}
	s.mu.Unlock()
	if len(held) == 0 {
		return
	}
	done := s.cfg.PredecessorDone
	go func() {
		if done != nil {
			select {
			case <-done:
			case <-ctx.Done():
			}
		}
		// The predecessor's sessions are over: its joins need no
		// listener now, ours hold their own references.
		s.mu.Lock()
		pls := make(map[uint16]*portListener, len(held))
		for _, port := range held {
			pls[port] = s.portListeners[port]
		}
		s.mu.Unlock()
		for port, pl := range pls {
			if pl != nil {
				s.releasePort(port, pl)
			}
		}
	}()
}
