package console_test

import (
	"log"
	"log/slog"
	"net/http"
	"os"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/queue"
	"github.com/mtakit/mtakit/queue/admin/console"
)

// Serving the console of a spool on loopback, for the admins of a
// credential file; the Activity is given to the server (mtakit.Server's
// Events) and wraps its log handler, so the overview has its chart.
func ExampleNew() {
	sp, err := queue.Open("/var/spool/mymta", queue.SpoolConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer sp.Close()
	users, err := auth.LoadCredentialFile("/etc/mymta/users", auth.CredentialOptions{})
	if err != nil {
		log.Fatal(err)
	}
	activity := &console.Activity{}
	logger := slog.New(activity.LogHandler(slog.NewTextHandler(os.Stderr, nil)))
	_ = logger // the server's logger: mtakit.Server{Logger: logger, Events: activity, ...}

	c, err := console.New(console.Config{
		Queue:         sp,
		Authenticator: users,
		Admins:        []string{"john@doe-family.com"},
		Activity:      activity,
		Path:          "/console/",
		Logger:        logger,
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/console/", c)
	log.Fatal(http.ListenAndServe("127.0.0.1:8025", mux))
}
