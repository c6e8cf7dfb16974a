// Command dnsserver serves DNS records on loopback, over UDP and TCP, for
// load tests and demos that must not touch the system resolver: point a
// server's -dns flag at it.
//
//	go run ./examples/smtpload/dnsserver -listen 127.0.0.1:0 \
//		'example.net. TXT "v=spf1 ip4:127.0.0.0/8 -all"' \
//		'sel._domainkey.example.net. TXT "v=DKIM1; k=ed25519; p=..."'
//
// Records are zone-file lines given as arguments, or a whole zone file
// with -zone (both may be used; $ORIGIN, $TTL, comments and parentheses
// are understood; a missing TTL is 300, names are taken as absolute). The
// first line written to stdout is "dns listening on ADDR", ADDR being the
// host:port answering both UDP and TCP. It serves until interrupted.
//
// It is built on internal/dnstest, an authoritative server: names outside
// the records answer NXDOMAIN, nothing is forwarded. It listens only on
// loopback addresses.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/mtakit/mtakit/internal/dnstest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "dnsserver:", err)
		os.Exit(2)
	}
}

// run serves the records of args until ctx ends. It writes the listening
// address to stdout once the server answers.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dnsserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "loopback host:port for UDP and TCP (port 0: any free port)")
	zone := fs.String("zone", "", "zone file to serve (in addition to the records given as arguments)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: dnsserver [-listen 127.0.0.1:0] [-zone file] ['name. TYPE data' ...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	want, err := loopbackAddr(*listen)
	if err != nil {
		return err
	}
	records := fs.Args()
	if *zone != "" {
		text, err := os.ReadFile(*zone)
		if err != nil {
			return err
		}
		records = append(records, string(text))
	}
	if len(records) == 0 {
		return errors.New("no records: give zone-file lines as arguments or -zone file")
	}
	srv, err := dnstest.Start(records...)
	if err != nil {
		return err
	}
	defer srv.Close()

	addr := srv.Addr()
	if want.Port() != 0 || want.Addr() != netip.MustParseAddr("127.0.0.1") {
		// dnstest picks its own port on 127.0.0.1; relay the asked-for
		// address to it.
		f, err := newForwarder(want.String(), addr)
		if err != nil {
			return err
		}
		defer f.close()
		addr = f.addr
	}
	fmt.Fprintf(stdout, "dns listening on %s\n", addr)
	<-ctx.Done()
	return nil
}

// loopbackAddr parses host:port and insists on a loopback IP.
func loopbackAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("-listen %q: want a loopback ip:port: %w", s, err)
	}
	if !ap.Addr().IsLoopback() {
		return netip.AddrPort{}, fmt.Errorf("-listen %q: only loopback addresses are served", s)
	}
	return ap, nil
}

// forwarder relays UDP datagrams and TCP streams from one address to the
// dnstest server.
type forwarder struct {
	addr string
	pc   net.PacketConn
	ln   net.Listener
	wg   sync.WaitGroup
}

func newForwarder(listen, backend string) (*forwarder, error) {
	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, err
	}
	f := &forwarder{addr: pc.LocalAddr().String(), pc: pc, ln: ln}
	f.wg.Add(2)
	go f.serveUDP(backend)
	go f.serveTCP(backend)
	return f, nil
}

func (f *forwarder) close() {
	f.pc.Close()
	f.ln.Close()
	f.wg.Wait()
}

// queryTimeout bounds one relayed exchange.
const queryTimeout = 5 * time.Second

func (f *forwarder) serveUDP(backend string) {
	defer f.wg.Done()
	for {
		buf := make([]byte, 65535)
		n, from, err := f.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		go func() {
			c, err := net.Dial("udp", backend)
			if err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(queryTimeout))
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			resp := make([]byte, 65535)
			m, err := c.Read(resp)
			if err != nil {
				return
			}
			f.pc.WriteTo(resp[:m], from)
		}()
	}
}

func (f *forwarder) serveTCP(backend string) {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			b, err := net.Dial("tcp", backend)
			if err != nil {
				return
			}
			defer b.Close()
			deadline := time.Now().Add(queryTimeout)
			c.SetDeadline(deadline)
			b.SetDeadline(deadline)
			done := make(chan struct{})
			go func() {
				io.Copy(b, c)
				b.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, b)
			<-done
		}()
	}
}
