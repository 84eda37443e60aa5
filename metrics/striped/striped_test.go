package striped_test

import (
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/portcullis/portcullis/metrics/striped"
)

var buckets = []float64{.000005, .00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}

// A striped histogram fed from many goroutines exposes exactly what
// client_golang's own histogram exposes for the same observations,
// including values right on a bucket's upper bound.
func TestHistogramMatchesClientGolang(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	sv := striped.NewHistogramVec(prometheus.HistogramOpts{Name: "d_seconds", Help: "h", Buckets: buckets}, []string{"cache"})
	pv := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "d_seconds", Help: "h", Buckets: buckets}, []string{"cache"})
	reg.MustRegister(sv)
	ref := prometheus.NewPedanticRegistry()
	ref.MustRegister(pv)

	series := []string{"hit", "miss"}
	handles := map[string]*striped.Histogram{}
	for _, l := range series {
		handles[l] = sv.With(l)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 5000 {
				label := series[i%2]
				var d time.Duration
				switch i % 3 {
				case 0: // exactly on a bound
					d = time.Duration(math.Round(buckets[r.IntN(len(buckets))] * 1e9))
				case 1:
					d = time.Duration(r.Int64N(int64(2 * time.Second)))
				default:
					d = time.Duration(r.Int64N(int64(100 * time.Microsecond)))
				}
				pv.WithLabelValues(label).Observe(d.Seconds())
				handles[label].Observe(d)
			}
		})
	}
	wg.Wait()
	got, want := gather(t, reg), gather(t, ref)
	if len(got) != len(want) {
		t.Fatalf("series: got %d, want %d", len(got), len(want))
	}
	for label, w := range want {
		g := got[label]
		if g.GetSampleCount() != w.GetSampleCount() {
			t.Errorf("%s: count %d, want %d", label, g.GetSampleCount(), w.GetSampleCount())
		}
		if math.Abs(g.GetSampleSum()-w.GetSampleSum()) > 1e-6 {
			t.Errorf("%s: sum %v, want %v", label, g.GetSampleSum(), w.GetSampleSum())
		}
		for i, b := range w.GetBucket() {
			gb := g.GetBucket()[i]
			if gb.GetUpperBound() != b.GetUpperBound() || gb.GetCumulativeCount() != b.GetCumulativeCount() {
				t.Errorf("%s: bucket %v: %d, want le=%v %d", label, gb.GetUpperBound(), gb.GetCumulativeCount(), b.GetUpperBound(), b.GetCumulativeCount())
			}
		}
	}
}

// gather returns each series' histogram by its one label's value.
func gather(t *testing.T, g prometheus.Gatherer) map[string]*dto.Histogram {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.Histogram{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetHistogram()
		}
	}
	return out
}

func TestCounterVec(t *testing.T) {
	v := striped.NewCounterVec(prometheus.CounterOpts{Namespace: "p", Name: "decisions_total", Help: "Decisions."}, []string{"outcome"})
	allow, deny := v.With("allow"), v.With("deny")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 10000 {
				allow.Inc()
			}
			deny.Inc()
		})
	}
	wg.Wait()
	const want = `
# HELP p_decisions_total Decisions.
# TYPE p_decisions_total counter
p_decisions_total{outcome="allow"} 40000
p_decisions_total{outcome="deny"} 4
`
	if err := testutil.CollectAndCompare(v, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkHistogramParallel(b *testing.B) {
	h := striped.NewHistogramVec(prometheus.HistogramOpts{Name: "d", Help: "h", Buckets: buckets}, []string{"cache"}).With("hit")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Observe(700 * time.Nanosecond)
		}
	})
}

func BenchmarkClientGolangHistogramParallel(b *testing.B) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "d", Help: "h", Buckets: buckets})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Observe((700 * time.Nanosecond).Seconds())
		}
	})
}
