package handover

import (
	"net"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// pair returns two connected ends of a unix stream socket.
func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *Conn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return NewConn(c.(*net.UnixConn))
	}
	return conn(fds[0]), conn(fds[1])
}

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// More files than one SCM_RIGHTS message carries arrive in order, each the
// same open file as sent, and the messages around them stay in step.
func TestSendReceiveFiles(t *testing.T) {
	a, b := pair(t)
	var files []*os.File
	var want []uint64
	for range 300 {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		t.Cleanup(func() { r.Close() })
		files = append(files, r)
		want = append(want, inode(t, r))
	}
	offer := Offer{PID: 42, Version: "v1", Files: []File{{Kind: KindListener, Addr: "[::]:5124"}}}
	errc := make(chan error, 1)
	go func() {
		if err := a.Send(offer, files); err != nil {
			errc <- err
			return
		}
		errc <- a.Send(Released{Sessions: 7}, nil)
	}()
	var got Offer
	recv, err := b.Receive(&got)
	if err != nil {
		t.Fatal(err)
	}
	if got.PID != 42 || got.Version != "v1" || len(got.Files) != 1 || got.Files[0].Addr != "[::]:5124" {
		t.Fatalf("offer %+v", got)
	}
	if len(recv) != len(files) {
		t.Fatalf("%d files, want %d", len(recv), len(files))
	}
	for i, f := range recv {
		if ino := inode(t, f); ino != want[i] {
			t.Fatalf("file %d: inode %d, want %d", i, ino, want[i])
		}
		f.Close()
	}
	var rel Released
	if more, err := b.Receive(&rel); err != nil || len(more) != 0 || rel.Sessions != 7 {
		t.Fatalf("released %+v, %d files, %v", rel, len(more), err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// A peer that is not a converter gets an error, not a huge allocation.
func TestReceiveRefusesHugeMessage(t *testing.T) {
	a, b := pair(t)
	go a.c.Write([]byte{0x7f, 0xff, 0xff, 0xff})
	if _, err := b.Receive(nil); err == nil {
		t.Fatal("no error for a 2 GiB message")
	}
}

// Sending a listening socket leaves it non-blocking: O_NONBLOCK belongs to
// the open file that sender and receiver share, and a blocking listener
// would hang the sender's accept loop.
func TestSendKeepsNonBlocking(t *testing.T) {
	a, b := pair(t)
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	go a.Send(Offer{}, []*os.File{f})
	got, err := b.Receive(nil)
	if err != nil || len(got) != 1 {
		t.Fatalf("received %d files, %v", len(got), err)
	}
	got[0].Close()
	rc, _ := l.SyscallConn()
	var flags int
	rc.Control(func(fd uintptr) { flags, _ = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if flags&unix.O_NONBLOCK == 0 {
		t.Fatal("the listener is in blocking mode after the hand-over")
	}
}
