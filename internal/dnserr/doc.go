// Package dnserr is the one classification of DNS errors every rule of
// mtakit uses: an answer that the name or record does not exist (NXDOMAIN,
// NODATA: "not found") against everything else, which is temporary.
//
// RFC 7208 section 4.4 makes any DNS error other than NXDOMAIN a temporary
// one for SPF, and the DKIM and DMARC rules follow the same rule, so that a
// REFUSED or SERVFAIL answer gives temperror in all three and never a
// permanent result the mail is judged on.
//
// Libraries tell the two apart by the error's type: blitiri.com.ar/go/spf
// asserts err.(*net.DNSError) and go-msgauth asks net.Error's Temporary
// method. Classify therefore always returns a plain *net.DNSError.
package dnserr
