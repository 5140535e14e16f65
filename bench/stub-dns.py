#!/usr/bin/env python3
"""A tiny authoritative DNS stub (UDP) for bench/postfix-vs-portcullis.sh.

    stub-dns.py PORT PARENT_PID NAME=TXT...

Answers TXT queries for the given names with the given strings (TTL 1 h),
NODATA for their other types and NXDOMAIN for every other name (both with
an SOA, negative TTL 1 h), on 127.0.0.1:PORT. Portcullis's inbound SPF/DKIM/DMARC checks of scenario (d)
are pointed at it (`[delivery] dns_servers`), so they do the same work on
every machine: no lookups leave the machine, none wait for a timeout, and a
networked machine does not fetch the real records of the sender's domain.
Exits within a second of PARENT_PID going away.
"""
import os
import socket
import struct
import sys

port, parent = int(sys.argv[1]), int(sys.argv[2])
records = {}
for arg in sys.argv[3:]:
    name, txt = arg.split("=", 1)
    records.setdefault(name.lower().rstrip("."), []).append(txt.encode())


def answer(query):
    tid, flags, qdcount = struct.unpack(">HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    i, labels = 12, []
    while query[i]:
        n = query[i]
        labels.append(query[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
    question = query[12:i + 5]
    txts = records.get(".".join(labels).lower())
    answers = []
    if txts is not None and qtype == 16:
        for t in txts:
            rdata = b"".join(bytes([len(t[k:k + 255])]) + t[k:k + 255] for k in range(0, len(t), 255))
            answers.append(b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 3600, len(rdata)) + rdata)
    rcode = 0 if txts is not None else 3
    # NXDOMAIN and NODATA carry the zone's SOA (the root's, here), as real
    # servers' do, so that resolvers cache the negative answer.
    authority = [] if answers else [SOA]
    # QR, AA, RD copied, RA.
    out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    return (struct.pack(">HHHHHH", tid, out_flags, 1, len(answers), len(authority), 0)
            + question + b"".join(answers) + b"".join(authority))


# ". SOA . . 1 3600 600 86400 3600": owner, type, class, TTL, rdata.
_soa_rdata = b"\x00\x00" + struct.pack(">IIIII", 1, 3600, 600, 86400, 3600)
SOA = b"\x00" + struct.pack(">HHIH", 6, 1, 3600, len(_soa_rdata)) + _soa_rdata


sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", port))
sock.settimeout(1)
while True:
    try:
        data, addr = sock.recvfrom(4096)
    except socket.timeout:
        try:
            os.kill(parent, 0)
        except OSError:
            sys.exit(0)
        continue
    try:
        reply = answer(data)
    except (IndexError, struct.error):
        continue
    if reply:
        sock.sendto(reply, addr)
