package worker_test

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stemhq/stem/result"
	"github.com/stemhq/stem/worker"
)

func TestMetricsScrape(t *testing.T) {
	f := setupControl(t)
	m := worker.NewMetrics()
	w := f.worker("m", func(c *worker.Config) { c.Metrics = m })
	f.start(w)
	f.waitState(f.publish("count", 3, nil), result.Succeeded, 5*time.Second)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(b)
	for _, want := range []string{
		"stem_worker_concurrency 4", "stem_worker_concurrency_min 4", "stem_worker_concurrency_max 4",
		"stem_worker_inflight 0", "stem_tasks_processed_total 3", "stem_tasks_succeeded_total 3",
		"stem_tasks_failed_total 0", "stem_tasks_retried_total 0", "stem_tasks_revoked_total 0",
		`stem_task_duration_seconds_count{task="count"} 3`, `stem_queue_depth{queue="default"} 0`,
		`stem_child_recycles_total{reason="max-tasks"} 0`, "go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}
