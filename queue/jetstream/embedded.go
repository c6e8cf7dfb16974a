package jetstream

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an embedded single-node JetStream server (see
// StartEmbedded). The zero value of every field but Dir is its default.
type EmbeddedConfig struct {
	// Dir holds the server's JetStream data; required.
	Dir string
	// Addr is where it listens for clients, "host:port". Zero means
	// "127.0.0.1:0": a free port on loopback only.
	Addr string
	// Name is the server's name. Zero means "mtakit".
	Name string
	// Logger receives a line when the server starts and stops. Nil means
	// slog.Default(). (The server's own log is off.)
	Logger *slog.Logger
}

// Embedded is a running embedded JetStream server: one node, its streams
// with one replica, every write fsynced before it is acknowledged
// (sync_interval: always). It is for trying the JetStream store without a
// cluster, and for tests; a fleet runs a cluster of nats-server processes.
type Embedded struct {
	srv *server.Server
	log *slog.Logger
}

// StartEmbedded starts an embedded JetStream server and waits until it
// accepts connections. Shut it down with Close.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("jetstream: EmbeddedConfig.Dir is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Name == "" {
		cfg.Name = "mtakit"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	host, ps, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("jetstream: embedded server address: %w", err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return nil, fmt.Errorf("jetstream: embedded server port: %w", err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.Dir,
		// Every write fsynced before its PubAck: with one replica the
		// disk is the only copy (see the package doc).
		SyncAlways: true,
		NoSigs:     true,
		NoLog:      true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("jetstream: embedded server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("jetstream: embedded server did not start")
	}
	e := &Embedded{srv: srv, log: cfg.Logger}
	e.log.Info("jetstream: embedded server started", "url", e.URL(), "dir", cfg.Dir)
	return e, nil
}

// URL returns the URL clients connect to (Config.URL).
func (e *Embedded) URL() string { return e.srv.ClientURL() }

// Close shuts the server down and waits until it has.
func (e *Embedded) Close() error {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.log.Info("jetstream: embedded server stopped")
	return nil
}
