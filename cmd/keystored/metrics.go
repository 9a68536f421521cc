package main

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/keystore-dev/keystore/internal/tlsconf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveAdmin serves the admin listener on addr, on its own mux: Prometheus
// metrics (/metrics: the node's, Go's runtime's and the process's), a
// plain liveness check (/healthz: 200 while the process serves HTTP;
// readiness is the gRPC health service) and Go's profiles
// (/debug/pprof/). Nothing of it is on the client or peer port: bind it
// to loopback or a management network. The caller closes the returned
// server.
func serveAdmin(addr string, node []prometheus.Collector, logger *slog.Logger) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(node...)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && err != http.ErrServerClosed {
			logger.Warn("admin server stopped", "err", err)
		}
	}()
	logger.Info("serving metrics and profiles", "metrics", "http://"+ln.Addr().String()+"/metrics", "pprof", "http://"+ln.Addr().String()+"/debug/pprof/")
	return hs, nil
}

// collectors are the TLS metrics: when each certificate in use stops
// being valid (it is reloaded from its files, so the gauge follows a
// renewal).
func (s *security) collectors() []prometheus.Collector {
	var out []prometheus.Collector
	for _, c := range []struct {
		listener string
		src      *tlsconf.Source
	}{{"client", s.client}, {"peer", s.peer}} {
		if c.src == nil {
			continue
		}
		src := c.src
		out = append(out, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "keystore_tls_cert_not_after_timestamp_seconds",
			Help:        "When the certificate this node presents on a port stops being valid (Unix seconds); alert well before.",
			ConstLabels: prometheus.Labels{"listener": c.listener},
		}, func() float64 { return float64(src.NotAfter().Unix()) }))
	}
	return out
}
