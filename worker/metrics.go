package worker

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are a worker's Prometheus metrics. Counters and gauges are read
// from the worker when scraped (nothing on the hot path); the task
// duration histogram is observed once per task.
//
//	stem_worker_concurrency                     active concurrency
//	stem_worker_concurrency_min, _max           autoscale bounds
//	stem_worker_inflight                        running tasks
//	stem_worker_prefetched                      claimed tasks waiting for a slot
//	stem_tasks_processed_total, _succeeded_total, _failed_total,
//	  _retried_total, _revoked_total            task outcomes
//	stem_task_duration_seconds{task}            handler run time
//	stem_leases_lost_total                      tasks fenced: lease not renewed in time, or taken
//	stem_queue_depth{queue}                     ready tasks per consumed queue
//	stem_child_recycles_total{reason}           isolation children replaced
type Metrics struct {
	reg      *prometheus.Registry
	duration *prometheus.HistogramVec
	recycles *prometheus.CounterVec
	w        atomic.Pointer[Worker]
}

// NewMetrics returns a registry with stem's metrics and the Go runtime and
// process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "stem_task_duration_seconds", Help: "Handler run time of finished tasks.",
			Buckets: []float64{.0005, .001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 1800},
		}, []string{"task"}),
		recycles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stem_child_recycles_total", Help: "Isolation child processes replaced, by reason.",
		}, []string{"reason"}),
	}
	// Every reason is exported from the start, at 0.
	for _, r := range []string{RecycleMaxTasks, RecycleMaxMemory, RecycleCrashed, RecycleKilled, RecycleProtocol, RecycleOOM, RecycleLeaseLost} {
		m.recycles.WithLabelValues(r)
	}
	m.reg.MustRegister(m.duration, m.recycles, (*workerCollector)(m),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry is the underlying registry, to add a program's own metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) bind(w *Worker) { m.w.Store(w) }

func (m *Metrics) observe(task string, d time.Duration) {
	m.duration.WithLabelValues(task).Observe(d.Seconds())
}

func (m *Metrics) recycle(reason string) { m.recycles.WithLabelValues(reason).Inc() }

// workerCollector reads the bound worker at scrape time.
type workerCollector Metrics

var (
	descConcurrency = prometheus.NewDesc("stem_worker_concurrency", "Active concurrency (slots).", nil, nil)
	descMin         = prometheus.NewDesc("stem_worker_concurrency_min", "Lower autoscale bound (the concurrency when autoscaling is off).", nil, nil)
	descMax         = prometheus.NewDesc("stem_worker_concurrency_max", "Upper autoscale bound (the concurrency when autoscaling is off).", nil, nil)
	descInflight    = prometheus.NewDesc("stem_worker_inflight", "Tasks running now.", nil, nil)
	descPrefetched  = prometheus.NewDesc("stem_worker_prefetched", "Tasks claimed and waiting for a slot.", nil, nil)
	descProcessed   = prometheus.NewDesc("stem_tasks_processed_total", "Tasks whose handler finished (any outcome).", nil, nil)
	descSucceeded   = prometheus.NewDesc("stem_tasks_succeeded_total", "Tasks that succeeded.", nil, nil)
	descFailed      = prometheus.NewDesc("stem_tasks_failed_total", "Tasks that failed for good.", nil, nil)
	descRetried     = prometheus.NewDesc("stem_tasks_retried_total", "Task attempts that failed and were retried.", nil, nil)
	descRevoked     = prometheus.NewDesc("stem_tasks_revoked_total", "Tasks revoked (skipped or terminated).", nil, nil)
	descLeasesLost  = prometheus.NewDesc("stem_leases_lost_total", "Tasks stopped because their lease could not be renewed in time or was taken by another claim (self-fencing).", nil, nil)
	descDepth       = prometheus.NewDesc("stem_queue_depth", "Tasks ready in a consumed queue.", []string{"queue"}, nil)
)

// Describe implements prometheus.Collector.
func (c *workerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConcurrency, descMin, descMax, descInflight, descPrefetched, descProcessed, descSucceeded, descFailed, descRetried, descRevoked, descLeasesLost, descDepth} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *workerCollector) Collect(ch chan<- prometheus.Metric) {
	w := c.w.Load()
	if w == nil {
		return
	}
	st := w.Stats()
	minC, maxC := w.bounds()
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	cnt := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	g(descConcurrency, float64(st.ActiveConcurrency))
	g(descMin, float64(minC))
	g(descMax, float64(maxC))
	g(descInflight, float64(st.InFlight))
	g(descPrefetched, float64(st.Outstanding-st.InFlight))
	cnt(descProcessed, st.Counters.Processed)
	cnt(descSucceeded, st.Counters.Succeeded)
	cnt(descFailed, st.Counters.Failed)
	cnt(descRetried, st.Counters.Retried)
	cnt(descRevoked, st.Counters.Revoked)
	cnt(descLeasesLost, st.Counters.LeasesLost)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for q, n := range w.queueDepths(ctx) {
		if n >= 0 {
			ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, float64(n), q)
		}
	}
}

// bounds returns the concurrency bounds: the autoscale bounds when it is
// on, else the concurrency twice.
func (w *Worker) bounds() (minC, maxC int) {
	cfg := w.scaler.config()
	if cfg.Enabled {
		return cfg.Min, cfg.Max
	}
	_, limit := w.slots.stats()
	return limit, limit
}
