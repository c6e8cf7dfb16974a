package admin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Config configures Listen. Its zero value has no listener: set Socket,
// Addr or both. Listen reads it once.
type Config struct {
	// Queue is the queue administered; required (a *queue.Spool).
	Queue Queue
	// Socket is the path of a Unix socket to serve the API on, without a
	// token: the socket is made mode 0600 (only the server's user may
	// connect), so keep it in a directory only that user can write to.
	// Its path is limited to 104 bytes, its directory's to about 89 (the
	// socket is bound in a private directory there, then renamed).
	// A socket file left by a server that is gone is replaced; one that
	// answers is an error (another server runs). Empty: none.
	Socket string
	// Addr is a TCP host:port to serve the API on, which needs Token. It
	// must be a loopback address ("127.0.0.1:8025", "[::1]:8025",
	// "localhost:8025") unless AllowRemote is set. Empty: none.
	Addr string
	// Token is the bearer token every request on Addr must carry
	// ("Authorization: Bearer <Token>"); required with Addr, unused on
	// the socket. Make it long and random.
	Token string
	// AllowRemote lets Addr be any address. The token then travels in
	// clear text unless a TLS proxy is put in front: set it only when the
	// network between is trusted.
	AllowRemote bool
	// Logger receives the API's log lines (see Handler.Logger). Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Server is the admin API listening, as Listen returns it.
type Server struct {
	log  *slog.Logger
	lns  []net.Listener
	hss  []*http.Server
	tcp  net.Addr
	once sync.Once
}

// Listen opens the listeners cfg asks for (see Config), checking it. Call
// Serve to serve them, or Close.
func Listen(cfg Config) (*Server, error) {
	switch {
	case cfg.Queue == nil:
		return nil, errors.New("admin: Config.Queue is required")
	case cfg.Socket == "" && cfg.Addr == "":
		return nil, errors.New("admin: no listener: set Config.Socket or Config.Addr")
	case cfg.Addr != "" && cfg.Token == "":
		return nil, errors.New("admin: a TCP listener (Config.Addr) needs Config.Token")
	}
	if cfg.Addr != "" && !cfg.AllowRemote {
		if err := checkLoopback(cfg.Addr); err != nil {
			return nil, err
		}
	}
	s := &Server{log: cfg.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	add := func(ln net.Listener, token string) {
		h := &Handler{Queue: cfg.Queue, Token: token, Logger: s.log}
		s.lns = append(s.lns, ln)
		s.hss = append(s.hss, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)})
	}
	if cfg.Socket != "" {
		ln, err := listenUnix(cfg.Socket)
		if err != nil {
			return nil, err
		}
		add(ln, "")
	}
	if cfg.Addr != "" {
		ln, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("admin: %w", err)
		}
		s.tcp = ln.Addr()
		add(ln, cfg.Token)
	}
	return s, nil
}

// checkLoopback refuses a TCP address that is not a loopback one.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin: Config.Addr: %w", err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("admin: Config.Addr %q is not a loopback address (set Config.AllowRemote to allow it)", addr)
}

// maxSocketPath is the longest Unix socket path accepted: 104 bytes on
// the BSDs and macOS, 108 on Linux.
const maxSocketPath = 104

// listenUnix listens on the Unix socket path, mode 0600, replacing a
// socket file nobody answers on.
func listenUnix(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin: %s: another server answers on it", path)
		}
		os.Remove(path) // left by a server that is gone
	}
	// Bound in a directory of its own (mode 0700) and given mode 0600
	// there, then renamed into place: no other user can connect between
	// the bind and the chmod, whatever the umask.
	dir, err := os.MkdirTemp(filepath.Dir(path), ".a")
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxSocketPath || len(path) > maxSocketPath {
		return nil, fmt.Errorf("admin: socket path %s too long: Unix socket paths are limited to %d bytes (its directory's path to about %d)",
			path, maxSocketPath, maxSocketPath-15)
	}
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin: %w", err)
	}
	return &unixListener{Listener: ln, path: path}, nil
}

// unixListener removes its socket file when closed.
type unixListener struct {
	net.Listener
	path string
	once sync.Once
}

func (l *unixListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { os.Remove(l.path) })
	return err
}

// Addr returns the address of the TCP listener (useful with port 0), nil
// without one.
func (s *Server) Addr() net.Addr { return s.tcp }

// Serve serves the API until ctx ends, then closes the listeners
// (removing the socket) and returns nil; requests under way get up to 5
// seconds to finish. It returns an error if a listener fails.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, len(s.lns))
	for i, hs := range s.hss {
		go func() {
			if err := hs.Serve(s.lns[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin: %w", err)
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, hs := range s.hss {
		if serr := hs.Shutdown(sctx); serr != nil {
			hs.Close()
		}
	}
	s.Close()
	return err
}

// Close closes the listeners at once (removing the socket).
func (s *Server) Close() error {
	s.once.Do(func() {
		for _, hs := range s.hss {
			hs.Close()
		}
		for _, ln := range s.lns {
			ln.Close()
		}
	})
	return nil
}
