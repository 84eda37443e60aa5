package proxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the HTTP layer's Prometheus collectors. Labels are bounded
// sets only: never a token, user, address or raw path.
type metrics struct {
	shadowDisagreements *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		shadowDisagreements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "portcullis",
			Name:      "shadow_route_disagreements_total",
			Help:      "Requests the shadow route rules would have decided differently from the active ones, by what the shadow rules would have done.",
		}, []string{"shadow"}),
	}
	if reg != nil {
		reg.MustRegister(m.shadowDisagreements)
	}
	return m
}
