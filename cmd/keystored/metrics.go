package main

import (
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/keystore-dev/keystore/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics serves Prometheus metrics (/metrics: the node's, Go's
// runtime's and the process's) and a plain liveness check (/healthz: 200
// while the process serves HTTP; readiness is the gRPC health service) on
// addr, on their own mux and listener.
func serveMetrics(addr string, srv *server.Server, logger *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(srv.Collectors()...)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && err != http.ErrServerClosed {
			logger.Warn("metrics server stopped", "err", err)
		}
	}()
	logger.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	return nil
}
