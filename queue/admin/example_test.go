package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/admin"
)

// Serving the admin API of a spool on a Unix socket, and asking it how
// many messages each queue holds, as an operator's tool does.
func ExampleListen() {
	dir, _ := os.MkdirTemp("", "admin")
	defer os.RemoveAll(dir)
	sp, err := queue.Open(filepath.Join(dir, "spool"), queue.SpoolConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer sp.Close()

	sock := filepath.Join(dir, "admin.sock")
	srv, err := admin.Listen(admin.Config{Queue: sp, Socket: sock})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()

	// The client side: HTTP over the socket.
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := client.Get("http://admin/v1/counts")
	if err != nil {
		log.Fatal(err)
	}
	var c admin.Counts
	json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, c.Total, c.Queues[queue.Deferred])

	stop()
	fmt.Println(<-done)
	// Output:
	// 200 0 0
	// <nil>
}

// Mounting the handler in a server of one's own, behind a token.
func ExampleHandler() {
	dir, _ := os.MkdirTemp("", "admin")
	defer os.RemoveAll(dir)
	sp, err := queue.Open(dir, queue.SpoolConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer sp.Close()

	mux := http.NewServeMux()
	mux.Handle("/v1/", &admin.Handler{Queue: sp, Token: os.Getenv("QUEUE_ADMIN_TOKEN")})
	_ = &http.Server{Addr: "127.0.0.1:8025", Handler: mux} // then ListenAndServe
}

// The admin API as Go calls, as the web console makes them: the same
// code as the HTTP endpoints.
func ExampleAPI() {
	dir, _ := os.MkdirTemp("", "admin")
	defer os.RemoveAll(dir)
	sp, err := queue.Open(dir, queue.SpoolConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer sp.Close()

	api := &admin.API{Queue: sp}
	held, err := api.Find(admin.Filter{Queue: queue.Hold})
	if err != nil {
		log.Fatal(err)
	}
	ids := make([]string, len(held))
	for i, e := range held {
		ids[i] = e.ID
	}
	res, err := api.DoAll(context.Background(), "release", ids)
	fmt.Println(len(res.Results), res.Failed, err)
	_, err = api.Do(context.Background(), "explode", "id")
	fmt.Println(admin.IsBadRequest(err))
	// Output:
	// 0 0 <nil>
	// true
}
