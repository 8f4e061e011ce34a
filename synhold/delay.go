package synhold

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/convert-tc/converter/bpf"
)

// Delayer holds every SYN+ACK and RST a server sends from its ports and
// sends each again after a fixed delay: a slow or far server, made in the
// server's own namespace without netem (which would delay everything).
// For labs and tests.
type Delayer struct {
	prog  *bpf.SynHold
	rd    *ringbuf.Reader
	snd   *sender
	delay time.Duration
	log   *slog.Logger

	delayed atomic.Uint64
	pending sync.WaitGroup
	done    chan struct{}
	mu      sync.Mutex
	closed  bool
}

// NewDelayer loads the delay program for ports; Attach puts it on the
// server's interfaces.
func NewDelayer(ports []uint16, delay time.Duration, log *slog.Logger) (*Delayer, error) {
	prog, err := bpf.LoadDelay(ports)
	if err != nil {
		return nil, err
	}
	d := &Delayer{prog: prog, delay: delay, log: log, done: make(chan struct{})}
	if d.snd, err = openSender(); err != nil {
		prog.Close()
		return nil, err
	}
	if d.rd, err = prog.Events(); err != nil {
		d.snd.close()
		prog.Close()
		return nil, err
	}
	go d.read()
	return d, nil
}

// Attach attaches the delay to the interface with this index.
func (d *Delayer) Attach(ifindex int) error { return d.prog.Attach(ifindex) }

// Delayed is how many frames were delayed.
func (d *Delayer) Delayed() uint64 { return d.delayed.Load() }

func (d *Delayer) read() {
	defer close(d.done)
	readFrames(d.rd, d.log, "delay", d.hold)
}

// hold sends ev's frame again after the delay.
func (d *Delayer) hold(ev bpf.HeldFrame) {
	d.delayed.Add(1)
	d.pending.Add(1)
	time.AfterFunc(d.delay, func() {
		defer d.pending.Done()
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.closed {
			return
		}
		if err := d.snd.send(ev.Ifindex, ev.Frame); err != nil {
			d.log.Warn("delay: send", "error", err.Error())
		}
	})
}

// Close sends nothing more and unloads the program.
func (d *Delayer) Close() error {
	err := d.prog.Close()
	d.rd.Close()
	<-d.done
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.pending.Wait() // the timers that fire now return at once
	d.snd.close()
	if errors.Is(err, bpf.ErrClosed) {
		return nil
	}
	return err
}
