#!/usr/bin/env python3
"""Independent SASL clients for crates/server/tests/sasl_mechanisms.rs.

usage: sasl_client.py MECH HOST PORT USER SECRET

Connects with implicit TLS (certificate not verified: the test server's is
self-signed), EHLO, then AUTH with MECH:
  SCRAM-SHA-256  scramp's client (verifies the server signature)
  CRAM-MD5       smtplib's own CRAM-MD5 (smtp.login picks it when it is
                 the only mechanism advertised)
Prints one line: "ok", or "fail CODE [scram-error]" and exits 0 either way;
exit 2 on a usage or protocol problem. Every socket operation times out.
"""

import base64
import smtplib
import ssl
import sys


def main():
    if len(sys.argv) != 6:
        print("usage: sasl_client.py MECH HOST PORT USER SECRET", file=sys.stderr)
        return 2
    mech, host, port, user, secret = sys.argv[1:]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    smtp = smtplib.SMTP_SSL(host, int(port), context=ctx, timeout=10)
    smtp.ehlo("client.example")
    scram_error = ""
    try:
        if mech == "SCRAM-SHA-256":
            import scramp

            client = scramp.ScramClient(["SCRAM-SHA-256"], user, secret)
            step = {"n": 0}

            def scram(challenge=None):
                nonlocal scram_error
                step["n"] += 1
                if challenge is None:
                    return client.get_client_first()
                if step["n"] == 2:
                    client.set_server_first(challenge.decode())
                    return client.get_client_final()
                try:
                    client.set_server_final(challenge.decode())
                except scramp.ScramException as e:
                    scram_error = str(e).replace(" ", "_")
                return ""

            code, _ = smtp.auth("SCRAM-SHA-256", scram, initial_response_ok=True)
        elif mech == "CRAM-MD5":
            advertised = smtp.esmtp_features.get("auth", "").split()
            if "CRAM-MD5" not in advertised:
                print("fail not-advertised")
                return 0
            smtp.user, smtp.password = user, secret
            code, _ = smtp.auth("CRAM-MD5", smtp.auth_cram_md5, initial_response_ok=False)
        else:
            print("unknown mechanism", file=sys.stderr)
            return 2
        print("ok" if code == 235 else f"fail {code} {scram_error}".strip())
    except smtplib.SMTPAuthenticationError as e:
        print(f"fail {e.smtp_code} {scram_error}".strip())
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
