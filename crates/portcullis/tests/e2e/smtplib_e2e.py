#!/usr/bin/env python3
"""End-to-end checks of a running Portcullis with Python's smtplib.

Usage: smtplib_e2e.py HOST SMTP_PORT SUBMISSION_PORT SUBMISSIONS_PORT USER PASSWORD CAFILE

Prints one JSON object with the queue ids of the accepted messages; exits
non-zero with a message naming the failed check otherwise.
"""
import base64
import json
import smtplib
import ssl
import sys
from email.message import EmailMessage


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def tls_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def message(sender, rcpt, subject):
    m = EmailMessage()
    m["From"] = sender
    m["To"] = rcpt
    m["Subject"] = subject
    m.set_content("Hello from smtplib.\n.leading dot line\n")
    return m


def wire(m):
    """RFC 5322 requires CRLF; smtplib.data() sends bytes unchanged."""
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))


def queue_id(reply_text):
    text = reply_text.decode() if isinstance(reply_text, bytes) else reply_text
    marker = "queued as "
    expect(marker in text, f"no queue id in {text!r}")
    return text.split(marker, 1)[1].strip()


def send_and_get_id(smtp, sender, rcpt, subject):
    """send_message hides the final reply; drive the transaction by hand."""
    code, _ = smtp.mail(sender)
    expect(code == 250, f"MAIL got {code}")
    code, _ = smtp.rcpt(rcpt)
    expect(code == 250, f"RCPT got {code}")
    code, text = smtp.data(wire(message(sender, rcpt, subject)))
    expect(code == 250, f"DATA got {code} {text!r}")
    return queue_id(text)


def main():
    host, smtp_port, sub_port, subs_port, user, password, cafile = sys.argv[1:8]
    ctx = tls_context(cafile)
    ids = {}

    # 1. submission + STARTTLS + AUTH PLAIN
    with smtplib.SMTP(host, int(sub_port), timeout=20) as s:
        s.ehlo("e2e.client")
        expect("auth" not in s.esmtp_features, "AUTH advertised before STARTTLS")
        # AUTH before STARTTLS is refused with 538 5.7.11.
        code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())
        expect(code == 538 and text.startswith(b"5.7.11"), f"AUTH before TLS got {code} {text!r}")
        # MAIL before AUTH is refused with 530 5.7.0.
        code, text = s.mail(user)
        expect(code == 530 and text.startswith(b"5.7.0"), f"MAIL before AUTH got {code} {text!r}")
        s.rset()
        s.starttls(context=ctx)
        s.ehlo("e2e.client")
        expect("auth" in s.esmtp_features, "AUTH not advertised after STARTTLS")
        s.user, s.password = user, password
        code, text = s.auth("PLAIN", s.auth_plain, initial_response_ok=True)
        expect(code == 235 and text.startswith(b"2.7.0"), f"AUTH PLAIN got {code} {text!r}")
        ids["starttls_plain"] = send_and_get_id(s, user, "someone@example.org", "starttls plain")

    # 2. submission + STARTTLS + AUTH LOGIN
    with smtplib.SMTP(host, int(sub_port), timeout=20) as s:
        s.starttls(context=ctx)
        s.ehlo("e2e.client")
        s.user, s.password = user, password
        code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        expect(code == 235, f"AUTH LOGIN got {code} {text!r}")
        ids["starttls_login"] = send_and_get_id(s, user, "someone@example.org", "starttls login")

    # 3. implicit TLS (RFC 8314) + login()
    with smtplib.SMTP_SSL(host, int(subs_port), context=ctx, timeout=20) as s:
        s.login(user, password)
        ids["implicit_tls"] = send_and_get_id(s, user, "someone@example.org", "implicit tls")

    # 4. wrong password -> 535 5.7.8
    with smtplib.SMTP_SSL(host, int(subs_port), context=ctx, timeout=20) as s:
        try:
            s.login(user, password + "-wrong")
            fail("wrong password accepted")
        except smtplib.SMTPAuthenticationError as e:
            expect(e.smtp_code == 535 and e.smtp_error.startswith(b"5.7.8"), f"wrong password got {e.smtp_code} {e.smtp_error!r}")

    # 5. relay to a foreign domain on the smtp (port 25 role) listener -> 554 5.7.1
    with smtplib.SMTP(host, int(smtp_port), timeout=20) as s:
        s.ehlo("e2e.client")
        expect("auth" not in s.esmtp_features, "AUTH offered on the smtp listener")
        code, _ = s.mail("stranger@example.net")
        expect(code == 250, f"MAIL on smtp got {code}")
        code, text = s.rcpt("victim@example.org")
        expect(code == 554 and text.startswith(b"5.7.1"), f"relay attempt got {code} {text!r}")
        # ...but mail for a local account is accepted.
        code, _ = s.rcpt(user)
        expect(code == 250, f"local recipient got {code}")
        code, text = s.data(wire(message("stranger@example.net", user, "inbound")))
        expect(code == 250, f"inbound DATA got {code} {text!r}")
        ids["inbound"] = queue_id(text)

    print(json.dumps(ids))


if __name__ == "__main__":
    main()
