package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/tproxy"
	"github.com/convert-tc/converter/nat"
)

// addressing is the server-leg source setup of the daemon.
type addressing struct {
	pool   *nat.Pool
	log    *nat.MappingLog
	routes *tproxy.LocalPrefixes
	// released: a successor took the addressing over (handedOver).
	released atomic.Bool
}

// setupAddressing builds the shared pool when the NAT mode shares one and
// makes the pool's addresses local; ecfg learns the pool and whether
// server legs preserve the client's address.
func setupAddressing(cfg Config, ecfg *engine.Config, log *slog.Logger) (*addressing, error) {
	a := &addressing{}
	switch cfg.NAT {
	case NATOwn:
		return a, nil
	case NATPreserve:
		ecfg.Preserve = true
		return a, nil
	case NATMixed:
		ecfg.Preserve = true
	case NATShare:
	default:
		return nil, configErrorf("--nat %q: want own, preserve, share or mixed", cfg.NAT)
	}
	if len(cfg.Pool) == 0 {
		return nil, configErrorf("--nat %s needs --pool CIDR", cfg.NAT)
	}
	var err error
	if cfg.NATLog != "" {
		if a.log, err = nat.OpenMappingLog(cfg.NATLog); err != nil {
			return nil, fmt.Errorf("open mapping log: %w", err)
		}
	}
	a.pool, err = nat.NewPool(nat.PoolConfig{
		Prefixes: cfg.Pool, BlockSize: cfg.PortBlock, MaxBlocksPerClient: cfg.MaxBlocksPerClient,
		Hold: cfg.PortHold, Log: a.log,
	})
	if err != nil {
		a.close(log)
		return nil, configErrorf("address pool: %v", err)
	}
	if a.routes, err = tproxy.InstallLocalPrefixes(cfg.Pool); err != nil {
		a.close(log)
		return nil, err
	}
	ecfg.NAT = a.pool
	ecfg.Hairpin = cfg.Hairpin
	return a, nil
}

// maintain hands back idle blocks (and logs their release) and reopens
// the mapping log on SIGHUP, for rotation, until g stops.
func (a *addressing) maintain(g *group, log *slog.Logger) {
	if a.pool == nil {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	g.run(func(ctx context.Context) {
		defer signal.Stop(hup)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				a.pool.Sweep()
			case <-hup:
				if a.log != nil {
					// Opening may be slow (a network file system): never
					// in the way of the sweep.
					g.run(func(context.Context) {
						if err := a.log.Reopen(); err != nil {
							log.Error("reopen mapping log", "error", err.Error())
						}
					})
				}
			}
		}
	})
}

// handedOver leaves the pool's local routes to the successor, which uses
// the same addresses.
func (a *addressing) handedOver() { a.released.Store(true) }

func (a *addressing) close(log *slog.Logger) {
	if a.routes != nil && !a.released.Load() {
		if err := a.routes.Remove(); err != nil {
			log.Warn("remove pool routes", "error", err.Error())
		}
	}
	if a.log != nil {
		a.log.Close()
	}
}

func (a *addressing) stats() any {
	if a.pool == nil {
		return map[string]string{"mode": "own"}
	}
	return a.pool.Stats()
}
