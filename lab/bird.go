package lab

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The cluster lab runs one BIRD 2 per router and node namespace, each with
// its own configuration, control socket, pid file and log under the lab's
// run directory (RunDir/rt, RunDir/n1, ...).

// birdFiles are the paths of one BIRD instance.
type birdFiles struct{ dir, conf, ctl, pid, log, out string }

func birdPaths(dir string) birdFiles {
	return birdFiles{
		dir:  dir,
		conf: filepath.Join(dir, "bird.conf"),
		ctl:  filepath.Join(dir, "bird.ctl"),
		pid:  filepath.Join(dir, "bird.pid"),
		log:  filepath.Join(dir, "bird.log"),
		out:  filepath.Join(dir, "bird.out"),
	}
}

// routerDir and nodeDir are the run directories of the router's and node
// k's processes.
func (l *Lab) routerDir() string     { return filepath.Join(l.RunDir, "rt") }
func (l *Lab) nodeDir(k int) string  { return filepath.Join(l.RunDir, "n"+strconv.Itoa(k)) }
func (l *Lab) RouterBIRD() string    { return birdPaths(l.routerDir()).ctl }
func (l *Lab) NodeBIRD(k int) string { return birdPaths(l.nodeDir(k)).ctl }

// bgpTimers is the timer part of every session's configuration.
func bgpTimers(bfd bool) string {
	b := "off"
	if bfd {
		b = "on"
	}
	return fmt.Sprintf("hold time %d; keepalive time %d;\n"+
		"\tconnect retry time 1; connect delay time 0; error wait time 1, 3;\n"+
		"\tbfd %s;", int(HoldTime/time.Second), int(KeepaliveTime/time.Second), b)
}

func bfdProtocol(iface string) string {
	return fmt.Sprintf("protocol bfd { interface %q { min rx interval %d ms; min tx interval %d ms; multiplier %d; }; }\n",
		iface, BFDInterval.Milliseconds(), BFDInterval.Milliseconds(), BFDMultiplier)
}

// routerBIRDConfig is the router's configuration: an eBGP session per node
// and family, the nodes' equal paths merged into one multipath kernel
// route (ECMP), which the watcher turns into a resilient group.
func (l *Lab) routerBIRDConfig() string {
	f := birdPaths(l.routerDir())
	vip4, vip6 := l.VIPs[0], l.VIPs[1]
	var b strings.Builder
	fmt.Fprintf(&b, `# BIRD 2 of cluster lab %s, router %s (written by converter lab up).
log %q all;
router id %s;
timeformat log iso long ms;

# Graceful restart: a restarted router BIRD (bird -R) keeps forwarding on
# the kernel routes it left (persist) until the nodes sent their routes
# again. The nodes are only "aware": a node whose BIRD dies is withdrawn at
# once, not kept for a restart time.
graceful restart wait 10;

protocol device { scan time 10; }

# Only the VIPs and the nodes' unique addresses are taken from the nodes.
filter from_nodes4 { if net ~ [ %s/32, %s{32,32} ] then accept; reject; }
filter from_nodes6 { if net ~ [ %s/128, %s{128,128} ] then accept; reject; }

# ECMP: "merge paths" puts the equal best paths of a prefix, one per node,
# into one multipath route (metric 32). The watcher (converter lab nhsync)
# mirrors the VIPs' into a resilient nexthop group with metric 10.
protocol kernel kernel4 { ipv4 { import none; export all; }; merge paths on limit %d; persist on; graceful restart on; }
protocol kernel kernel6 { ipv6 { import none; export all; }; merge paths on limit %d; persist on; graceful restart on; }
`, l.Prefix, l.Router, f.log, routerID, vip4, netip.PrefixFrom(clusterAddr4(101, 0), 24), vip6, netip.PrefixFrom(clusterAddr6(101, 0), 64), MaxNodes, MaxNodes)
	if l.BFD {
		b.WriteString(bfdProtocol("r-n*"))
	}
	fmt.Fprintf(&b, `
template bgp node {
	local as %d;
	%s
	graceful restart on;
}
`, RouterAS, bgpTimers(l.BFD))
	for _, n := range l.Nodes {
		fmt.Fprintf(&b, "protocol bgp n%dv4 from node { description %q; source address %s; neighbor %s as %d;\n\tipv4 { import filter from_nodes4; export none; }; }\n",
			n.Index, n.NS, n.Router[0], n.Uplink[0], NodeAS)
		fmt.Fprintf(&b, "protocol bgp n%dv6 from node { description %q; source address %s; neighbor %s as %d;\n\tipv6 { import filter from_nodes6; export none; }; }\n",
			n.Index, n.NS, n.Router[1], n.Uplink[1], NodeAS)
	}
	return b.String()
}

// nodeBIRDConfig is node n's configuration: it announces exactly the
// addresses of the converter's device cvclusterN, which holds the node's
// unique addresses while `converter run --cluster-vip` runs and the VIPs
// while it is ready. A drain takes the VIPs off, an exit (SIGKILL
// included) removes the device: BIRD withdraws them within milliseconds.
func (l *Lab) nodeBIRDConfig(n Node) string {
	f := birdPaths(l.nodeDir(n.Index))
	var b strings.Builder
	fmt.Fprintf(&b, `# BIRD 2 of cluster lab %s, node %s (written by converter lab up).
log %q all;
router id %s;
timeformat log iso long ms;

protocol device { scan time 10; }

# The converter's device: its addresses are what this node serves.
protocol direct cvdevice { ipv4; ipv6; interface "cvcluster*"; }

# Identical attributes on every node, so that the router merges the paths.
filter to_router { if proto = "cvdevice" then { bgp_origin = ORIGIN_IGP; accept; } reject; }
`, l.Prefix, n.NS, f.log, n.Addrs[0])
	if l.BFD {
		b.WriteString(bfdProtocol(IfNodeUplink))
	}
	fmt.Fprintf(&b, `
template bgp uplink {
	local as %d;
	%s
	graceful restart aware;
}
protocol bgp up4 from uplink { source address %s; neighbor %s as %d;
	ipv4 { import none; export filter to_router; }; }
protocol bgp up6 from uplink { source address %s; neighbor %s as %d;
	ipv6 { import none; export filter to_router; }; }
`, NodeAS, bgpTimers(l.BFD), n.Uplink[0], n.Router[0], RouterAS, n.Uplink[1], n.Router[1], RouterAS)
	return b.String()
}

// checkBIRD reports whether BIRD 2 is installed.
func checkBIRD() error {
	if _, err := exec.LookPath("bird"); err != nil {
		return fmt.Errorf("the cluster lab needs BIRD 2 (`bird`, Debian package bird2): %w", err)
	}
	return nil
}

// startBIRD starts BIRD in ns with the files in dir, unless it runs; a
// running one rereads its configuration. recover starts it with graceful
// restart recovery (-R), for a router whose predecessor died.
func startBIRD(ctx context.Context, ns string, f birdFiles, recover bool) (started bool, err error) {
	if pid := livePID(f.pid, f.conf); pid > 0 {
		lines, err := birdCommand(f.ctl, "configure", 5*time.Second)
		if err != nil {
			return false, fmt.Errorf("reconfigure BIRD %d in %s: %w", pid, ns, err)
		}
		if i := len(lines) - 1; i >= 0 && !strings.HasPrefix(lines[i], "0003") && !strings.HasPrefix(lines[i], "0004") && !strings.HasPrefix(lines[i], "0018") {
			return false, fmt.Errorf("reconfigure BIRD %d in %s: %s", pid, ns, strings.Join(lines, "; "))
		}
		return false, nil
	}
	os.Remove(f.ctl)
	out, err := os.Create(f.out)
	if err != nil {
		return false, err
	}
	defer out.Close()
	args := []string{"netns", "exec", ns, "bird", "-c", f.conf, "-s", f.ctl, "-P", f.pid}
	if recover {
		args = append(args, "-R")
	}
	// BIRD checks its configuration, forks and the parent exits; the
	// daemon lives on, detached, until lab down.
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile(f.out)
		return false, fmt.Errorf("start BIRD in %s: %w: %s", ns, err, strings.TrimSpace(string(msg)))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := birdCommand(f.ctl, "show status", time.Second)
		if err == nil {
			return true, nil
		}
		if time.Now().After(deadline) {
			return true, fmt.Errorf("BIRD in %s does not answer on %s: %w", ns, f.ctl, err)
		}
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// birdCommand runs one command on BIRD's control socket and returns the
// reply's lines ("1002-...", " ...", "0000 ").
func birdCommand(sock, command string, timeout time.Duration) ([]string, error) {
	c, err := net.DialTimeout("unix", sock, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(c)
	hello, err := r.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("BIRD greeting: %w", err)
	}
	if !strings.HasPrefix(hello, "0001 ") {
		return nil, fmt.Errorf("BIRD greeting %q", strings.TrimSpace(hello))
	}
	if _, err := fmt.Fprintf(c, "%s\n", command); err != nil {
		return nil, err
	}
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return lines, fmt.Errorf("BIRD reply to %q: %w", command, err)
		}
		line = strings.TrimRight(line, "\n")
		lines = append(lines, line)
		// 0xxx ends a reply, 8xxx and 9xxx are errors (which end it too);
		// 1xxx and 2xxx are its data.
		if code, last := birdCode(line); last {
			switch {
			case code < 1000:
				return lines, nil
			case code >= 8000:
				return lines, fmt.Errorf("BIRD: %s", strings.TrimSpace(line[5:]))
			}
		}
	}
}

// birdCode parses "DDDD-" or "DDDD " and reports whether the separator is
// a space (the reply's last line of that code).
func birdCode(line string) (int, bool) {
	if len(line) < 5 {
		return -1, false
	}
	code, err := strconv.Atoi(line[:4])
	if err != nil {
		return -1, false
	}
	return code, line[4] == ' '
}

// birdProtocol is one line of `show protocols`.
type birdProtocol struct {
	Name, Proto, Table, State, Since, Info string
}

// parseShowProtocols reads `show protocols` lines ("1002-n1v4 BGP ---
// up 12:00:01.123 Established").
func parseShowProtocols(lines []string) []birdProtocol {
	var out []birdProtocol
	for _, line := range lines {
		if code, _ := birdCode(line); code == 1002 {
			line = line[5:]
		} else if strings.HasPrefix(line, " ") {
			line = line[1:]
		} else {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := birdProtocol{Name: f[0], Proto: f[1], Table: f[2], State: f[3], Since: f[4]}
		if len(f) > 5 {
			p.Info = strings.Join(f[5:], " ")
		}
		out = append(out, p)
	}
	return out
}

// bgpState is the BGP state in a protocol's info ("Established", "Active
// Socket: Connection refused" -> "Active"); a protocol that is down has
// none, and says "Down".
func (p birdProtocol) bgpState() string {
	if f := strings.Fields(p.Info); len(f) > 0 {
		return f[0]
	}
	return "Down"
}
