package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Serve an SPF record on a free loopback port and look it up there.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{`example.net. TXT "v=spf1 ip4:127.0.0.0/8 -all"`}, pw, io.Discard)
		pw.Close()
	}()
	line, _ := bufio.NewReader(pr).ReadString('\n')
	addr := strings.TrimPrefix(strings.TrimSpace(line), "dns listening on ")

	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	txt, err := r.LookupTXT(ctx, "example.net.")
	fmt.Println(txt, err)
	cancel()
	<-done
	// Output: [v=spf1 ip4:127.0.0.0/8 -all] <nil>
}
