#!/usr/bin/env python3
"""Independent DKIM signer/verifier for mtakit's interop tests (dkimpy).

Never queries DNS: the key record is read from a file and served through
dkimpy's dnsfunc hook.

  dkimpy.py verify TXTFILE          < message   prints "pass" or "fail"
  dkimpy.py sign SELECTOR DOMAIN KEYFILE ALGO < message
                                    writes the signed message to stdout;
                                    ALGO is rsa-sha256 (KEYFILE: PEM) or
                                    ed25519-sha256 (KEYFILE: base64 seed)
"""
import sys

import dkim


def main():
    mode = sys.argv[1]
    msg = sys.stdin.buffer.read()
    if mode == "verify":
        with open(sys.argv[2], "rb") as f:
            txt = f.read().strip()

        def dnsfunc(name, timeout=5):
            return txt

        ok = dkim.verify(msg, dnsfunc=dnsfunc)
        sys.stdout.write("pass\n" if ok else "fail\n")
        return 0 if ok else 1
    if mode == "sign":
        selector, domain, keyfile, algo = sys.argv[2:6]
        with open(keyfile, "rb") as f:
            key = f.read()
        if algo == "ed25519-sha256":
            key = key.strip()
        sig = dkim.sign(
            msg,
            selector.encode(),
            domain.encode(),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=algo.encode(),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        sys.stdout.buffer.write(sig + msg)
        return 0
    sys.stderr.write("unknown mode %r\n" % mode)
    return 2


if __name__ == "__main__":
    sys.exit(main())
