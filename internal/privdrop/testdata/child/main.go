// Command child drops privileges as the daemon does and prints what every
// thread is left with, for privdrop's test (it runs in its own process,
// so the test process keeps its own privileges).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/convert-tc/converter/internal/privdrop"
)

func main() {
	// Threads that exist before the drop must lose their capabilities
	// too: start some and keep them busy.
	var wg, locked sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		locked.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			locked.Done()
			<-stop
		}()
	}
	// Each on a thread of its own before the drop: the test counts them.
	locked.Wait()
	err := privdrop.Drop([]int{privdrop.CapNetAdmin, privdrop.CapNetBindService}, os.Getenv("PRIVDROP_USER"))
	threads, terr := privdrop.Threads()
	close(stop)
	wg.Wait()
	out := map[string]any{"threads": threads, "uid": os.Getuid(), "euid": os.Geteuid()}
	if err != nil {
		out["error"] = err.Error()
	}
	if terr != nil {
		out["threads_error"] = terr.Error()
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
