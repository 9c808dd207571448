package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
)

func benchHost() error {
	e, err := envdtest.StartE()
	if err != nil {
		return err
	}
	defer e.Stop()
	// /metrics under 50 concurrent callers.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var (
		mu  sync.Mutex
		lat []time.Duration
		wg  sync.WaitGroup
		bad error
	)
	for w := 0; w < 50; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				t0 := time.Now()
				res, err := client.Get(e.URL + "/metrics")
				if err == nil {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						err = fmt.Errorf("/metrics: %d", res.StatusCode)
					}
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				if err != nil {
					bad = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if bad != nil {
		return bad
	}
	add("/metrics, 50 concurrent callers: p50", percentile(lat, 0.5).Round(10*time.Microsecond).String(), "", nil)
	add("/metrics, 50 concurrent callers: p99", percentile(lat, 0.99).Round(10*time.Microsecond).String(), "", nil)

	// Snapshot prepare, then the first post-restore /health and Start.
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	if err := startTrue(context.Background(), cl); err != nil {
		return err
	}
	t0 := time.Now()
	res, err := http.Post(e.URL+"/snapshot/prepare", "", nil)
	if err != nil {
		return err
	}
	res.Body.Close()
	prep := time.Since(t0)
	if res.StatusCode != http.StatusNoContent {
		return fmt.Errorf("/snapshot/prepare: %d", res.StatusCode)
	}
	add("/snapshot/prepare to 204", prep.Round(100*time.Microsecond).String(), "", nil)
	t0 = time.Now()
	res, err = http.Get(e.URL + "/health")
	if err != nil {
		return err
	}
	res.Body.Close()
	if err := startTrue(context.Background(), cl); err != nil {
		return err
	}
	add("first post-restore /health to first successful Start", time.Since(t0).Round(100*time.Microsecond).String(), "", nil)
	return nil
}
