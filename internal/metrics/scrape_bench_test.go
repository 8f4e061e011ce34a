package metrics

import (
	"context"
	"io"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
)

// BenchmarkConvertWhileScraping is the engine's conversion rate on
// loopback, in-process (connect with the Convert message and one byte in
// the SYN, read the byte's echo, close), without a scraper and with one
// that serves GET /metrics every 100 ms (10 Hz, as the issue asks) while
// the conversions run. -count N runs each arm N times, one arm after the
// other (bench/scrape.sh interleaves); compare their conn/s:
//
//	go test -run '^$' -bench ConvertWhileScraping -count 5 ./internal/metrics
//
// bench/scrape.sh measures the same through the real daemon in the
// namespace lab.
func BenchmarkConvertWhileScraping(b *testing.B) {
	for _, arm := range []struct {
		name     string
		interval time.Duration
	}{{"scrape=off", 0}, {"scrape=10Hz", 100 * time.Millisecond}} {
		b.Run(arm.name, func(b *testing.B) {
			lp := newLoop(b)
			echo := lp.server("203.0.113.1:80", echoConn)
			h := Handler(allSources(b, lp.srv))
			var scrapes atomic.Int64
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				if arm.interval == 0 {
					return
				}
				tick := time.NewTicker(arm.interval)
				defer tick.Stop()
				req := httptest.NewRequest("GET", "/metrics", nil)
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						w := httptest.NewRecorder()
						h.ServeHTTP(w, req)
						if w.Code == 200 {
							scrapes.Add(1)
						}
					}
				}
			}()
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				one := make([]byte, 1)
				for pb.Next() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					c, err := client.Dial(ctx, client.Options{Via: lp.via, Dest: echo}, []byte("x"))
					cancel()
					if err != nil {
						b.Error(err)
						return
					}
					c.CloseWrite()
					if _, err := io.ReadFull(c, one); err != nil {
						b.Error(err)
					}
					c.Close()
				}
			})
			b.StopTimer()
			close(stop)
			<-done
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conn/s")
			b.ReportMetric(float64(scrapes.Load()), "scrapes")
			lp.waitIdle()
		})
	}
}
