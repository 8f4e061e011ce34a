package handover

// The hand-over, as the successor sees it:
//
//	successor -> running daemon   POST /handover on the control socket (101)
//	running   -> successor        Offer, with every file it names
//	successor -> running          Ready once it accepts on the sockets (or Ready{Error})
//	running   -> successor        Released: it stopped accepting and drains
//	running closes the connection when it exits: the successor's cue that
//	the sockets and objects it holds for the old sessions are its alone.

// Kinds of handed files.
const (
	KindListener = "listener" // a listening TCP socket
	KindMap      = "map"      // a BPF map
	KindLink     = "link"     // a BPF tcx link
)

// Offer is what a running daemon hands over. Files[i] describes the i-th
// file descriptor that came with it.
type Offer struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
	Files   []File `json:"files"`
	// State is what else the successor takes over (addressing, routing),
	// as the daemon encodes it.
	State map[string]string `json:"state,omitempty"`
	// Error, when set, is why the running daemon does not hand over; the
	// offer then carries nothing.
	Error string `json:"error,omitempty"`
}

// File describes one handed file descriptor.
type File struct {
	Kind string `json:"kind"`
	// Listener: its address, and for a transparent per-port listener its
	// port (0 for a configured listener).
	Addr string `json:"addr,omitempty"`
	Port uint16 `json:"port,omitempty"`
	// Map and link: the program they belong to; a map's name; a link's
	// interface.
	Program string `json:"program,omitempty"`
	Name    string `json:"name,omitempty"`
	Ifindex int    `json:"ifindex,omitempty"`
}

// Ready is the successor's answer: it accepts on the sockets and runs the
// programs, or it gave up (Error), and the running daemon goes on as before.
type Ready struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	PID   int    `json:"pid"`
}

// Released is the running daemon's last message: it stopped accepting; its
// sessions run to their end (Sessions were in progress).
type Released struct {
	Sessions int64 `json:"sessions"`
}
