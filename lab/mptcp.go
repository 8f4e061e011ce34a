package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// The netlink library has no MPTCP path-manager support, so these shell out
// to `ip mptcp` (iproute2 >= 5.8).

// MPTCPEndpoint is one in-kernel path-manager endpoint; the JSON tags match
// `ip -j mptcp endpoint show`.
type MPTCPEndpoint struct {
	Address  string `json:"address"`
	ID       int    `json:"id,omitempty"`
	Port     int    `json:"port,omitempty"`
	Dev      string `json:"dev,omitempty"`
	Signal   bool   `json:"signal,omitempty"`
	Subflow  bool   `json:"subflow,omitempty"`
	Backup   bool   `json:"backup,omitempty"`
	Fullmesh bool   `json:"fullmesh,omitempty"`
}

// MPTCPLimits are the in-kernel path-manager limits of a namespace.
type MPTCPLimits struct {
	Subflows        int `json:"subflows"`
	AddAddrAccepted int `json:"add_addr_accepted"`
}

// runIP runs `ip args...` and returns stdout; errors carry ip's stderr.
func runIP(ctx context.Context, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func setMPTCPLimits(ctx context.Context, ns string, l MPTCPLimits) error {
	_, err := runIP(ctx, "-n", ns, "mptcp", "limits", "set", "subflows", strconv.Itoa(l.Subflows), "add_addr_accepted", strconv.Itoa(l.AddAddrAccepted))
	return wrapf(err, "set mptcp limits in %s", ns)
}

// getMPTCPLimits parses the plain output; iproute2 6.1 ignores -j here.
func getMPTCPLimits(ctx context.Context, ns string) (MPTCPLimits, error) {
	out, err := runIP(ctx, "-n", ns, "mptcp", "limits", "show")
	if err != nil {
		return MPTCPLimits{}, fmt.Errorf("show mptcp limits in %s: %w", ns, err)
	}
	return parseMPTCPLimits(string(out))
}

// parseMPTCPLimits parses "add_addr_accepted 4 subflows 4".
func parseMPTCPLimits(s string) (MPTCPLimits, error) {
	var l MPTCPLimits
	f := strings.Fields(s)
	for i := 0; i+1 < len(f); i += 2 {
		n, err := strconv.Atoi(f[i+1])
		if err != nil {
			return l, fmt.Errorf("parse mptcp limits %q: %w", s, err)
		}
		switch f[i] {
		case "subflows":
			l.Subflows = n
		case "add_addr_accepted":
			l.AddAddrAccepted = n
		}
	}
	return l, nil
}

func listMPTCPEndpoints(ctx context.Context, ns string) ([]MPTCPEndpoint, error) {
	out, err := runIP(ctx, "-n", ns, "-j", "mptcp", "endpoint", "show")
	if err != nil {
		return nil, fmt.Errorf("list mptcp endpoints in %s: %w", ns, err)
	}
	var eps []MPTCPEndpoint
	if err := json.Unmarshal(out, &eps); err != nil {
		return nil, fmt.Errorf("parse mptcp endpoints in %s: %w", ns, err)
	}
	return eps, nil
}

func addMPTCPEndpoint(ctx context.Context, ns string, ep MPTCPEndpoint) error {
	args := []string{"-n", ns, "mptcp", "endpoint", "add", ep.Address}
	if ep.Dev != "" {
		args = append(args, "dev", ep.Dev)
	}
	flags := []struct {
		name string
		set  bool
	}{{"signal", ep.Signal}, {"subflow", ep.Subflow}, {"backup", ep.Backup}, {"fullmesh", ep.Fullmesh}}
	for _, f := range flags {
		if f.set {
			args = append(args, f.name)
		}
	}
	_, err := runIP(ctx, args...)
	return wrapf(err, "add mptcp endpoint %s in %s", ep.Address, ns)
}
