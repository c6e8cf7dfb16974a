package kv_test

import (
	"context"
	"log"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mtakit/mtakit/auth"
	"github.com/mtakit/mtakit/queue/jetstream/kv"
	"github.com/mtakit/mtakit/relay"
)

// Three nodes of a fleet share their rate limits, greylisting triplets
// and AUTH failure counts through a three-node JetStream cluster; each
// node runs this.
func Example() {
	ctx := context.Background()
	nc, err := nats.Connect("nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222")
	if err != nil {
		log.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	limits, _ := relay.ParseRateLimits("msgs=200/h,rcpts=1000/h,conns=60/m")
	rates, err := kv.Open(ctx, js, kv.Config{Bucket: "mtakit_ratelimit", TTL: time.Hour, Replicas: 3})
	if err != nil {
		log.Fatal(err)
	}
	limiter, err := relay.NewRateLimiter(relay.RateLimitOptions{Limits: limits, Store: rates})
	if err != nil {
		log.Fatal(err)
	}
	triplets, err := kv.Open(ctx, js, kv.Config{Bucket: "mtakit_greylist", TTL: 36 * 24 * time.Hour, Replicas: 3})
	if err != nil {
		log.Fatal(err)
	}
	greylist, err := relay.NewGreylist(relay.GreylistOptions{Store: triplets})
	if err != nil {
		log.Fatal(err)
	}
	failures, err := kv.Open(ctx, js, kv.Config{Bucket: "mtakit_authfail", TTL: 15 * time.Minute, Replicas: 3})
	if err != nil {
		log.Fatal(err)
	}
	creds, err := auth.LoadCredentialFile("/etc/mail/users", auth.CredentialOptions{
		Limiter: &auth.FailureLimiter{Store: failures},
	})
	if err != nil {
		log.Fatal(err)
	}
	_, _, _ = limiter, greylist, creds // register the rules, give creds to smtp.Config.Authenticator
}
