package auth_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/mtakit/mtakit/auth"
)

func ExampleCredentialFile() {
	dir, _ := os.MkdirTemp("", "creds")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "passwd")

	// One "address:bcrypt-hash" line per user; HashPassword makes the
	// hash (this one is of "s3cret", at a low cost to keep the example
	// quick).
	hash := "$2a$04$vED7jZ6RfwqtAjIROjDQw.xgWuG4RXpOkkubLyMqE2RZBL19Bm1we"
	os.WriteFile(path, []byte("# doe-family users\njane@doe-family.com:"+hash+"\n"), 0o600)

	creds, err := auth.LoadCredentialFile(path, auth.CredentialOptions{})
	if err != nil {
		panic(err)
	}
	// Pick up edits of the file while the server runs.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go creds.Watch(ctx, 5*time.Second)

	client := netip.MustParseAddr("192.0.2.7")
	fmt.Println(creds.Authenticate(ctx, client, "jane@DOE-FAMILY.com", "s3cret"))
	err = creds.Authenticate(ctx, client, "jane@doe-family.com", "guess")
	fmt.Println(errors.Is(err, auth.ErrInvalidCredentials))
	// Output:
	// <nil>
	// true
}

func ExampleHashPassword() {
	hash, err := auth.HashPassword("correct horse battery staple")
	if err != nil {
		panic(err)
	}
	// A line for the credential file:
	fmt.Printf("jane@doe-family.com:%s\n", hash)
}
