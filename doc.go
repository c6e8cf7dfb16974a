// Package mtakit puts a whole mail server together from the SDK's parts: the
// SMTP listeners of package smtp, a durable queue store of package queue and
// the scheduler that delivers from it, configured once and run with
// Server.Run.
//
// The parts stay usable on their own (smtp.NewServer, queue.NewScheduler)
// for an embedder who needs another arrangement; Server is the arrangement
// almost every program wants, with the hostname, the chain and the logger
// given once and the shutdown done in the right order: stop taking mail and
// let messages being received finish, then stop the scheduler, then close the
// store.
//
//	spool, err := queue.Open("./data/queue", queue.SpoolConfig{})
//	...
//	srv := &mtakit.Server{
//		Hostname: "mx.example.com",
//		Chain:    chain,
//		Store:    spool,
//		SMTP:     smtp.Config{Listeners: []smtp.Listener{{Name: "mta", Addr: ":25", Role: smtp.RoleMTA}}},
//		Delivery: queue.Config{Transports: map[string]queue.Transport{"maildir": &queue.Maildir{Root: "./data/mail"}}},
//	}
//	err = srv.Run(ctx) // until ctx ends
//
// # Configuration and logging
//
// The SDK has one configuration style: exported fields of a struct, each
// field's zero value a documented default, as net/http's Server. A value
// that validates, opens or starts something takes a Config in its
// constructor (smtp.NewServer, queue.NewScheduler); a ready-made rule takes
// an Options struct; everything else is configured by its own fields
// (policy.Chain, relay.MX, delegate.Service, and Server here). There are no
// functional options. Fields must not change once the value is in use.
//
// Every value that logs has a Logger *slog.Logger field; nil means
// slog.Default(). Server's Logger is given to the SMTP server, the
// scheduler, and the chain when the chain has none of its own.
package mtakit
