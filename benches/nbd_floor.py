#!/usr/bin/env python3
"""The floor of any NBD reader: the cheapest client we can write reads the whole export
and throws it away, and says what that cost in CPU.

    benches/nbd_floor.py SOCKET [BUF=1048576] [IN_FLIGHT=32]

Fixed newstyle handshake, NBD_OPT_GO, then READs of BUF bytes, IN_FLIGHT at a time,
each simple reply received with recv_into into one reused buffer (no copy in Python,
no structured replies, no extents, no zero check). What is left is the kernel's work of
moving the bytes out of the socket plus a little interpreter time per reply: what a
copier cannot go below on this machine when it reads this server. Prints one JSON line
(wall, CPU seconds, CPU-s per GiB, context switches).
"""
import json
import resource
import socket
import struct
import sys
import time

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPT_GO = 7
REP_MAGIC = 0x3E889045565A9
REP_ACK = 1
REP_INFO = 3
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
# Caps on what this reader takes from the server.
MAX_OPTION_REPLY = 1 << 20
MAX_REPLIES = 64


def exact(s, n):
    b = bytearray(n)
    v = memoryview(b)
    got = 0
    while got < n:
        k = s.recv_into(v[got:])
        if k == 0:
            raise SystemExit("nbd_floor: the server closed the connection")
        got += k
    return bytes(b)


def handshake(s):
    if exact(s, 8) != NBDMAGIC or exact(s, 8) != IHAVEOPT:
        raise SystemExit("nbd_floor: not a newstyle NBD server")
    (flags,) = struct.unpack(">H", exact(s, 2))
    if not flags & 1:
        raise SystemExit("nbd_floor: the server lacks fixed newstyle")
    s.sendall(struct.pack(">I", 1 | (flags & 2)))
    data = struct.pack(">I", 0) + struct.pack(">H", 0)  # default export, no info requests
    s.sendall(IHAVEOPT + struct.pack(">II", OPT_GO, len(data)) + data)
    size = None
    for _ in range(MAX_REPLIES):
        magic, _opt, kind, length = struct.unpack(">QIII", exact(s, 20))
        if magic != REP_MAGIC or length > MAX_OPTION_REPLY:
            raise SystemExit("nbd_floor: bad option reply")
        body = exact(s, length)
        if kind == REP_INFO and length >= 12 and struct.unpack(">H", body[:2])[0] == 0:
            size = struct.unpack(">Q", body[2:10])[0]
        elif kind == REP_ACK:
            if size is None:
                raise SystemExit("nbd_floor: no export size")
            return size
        elif kind & (1 << 31):
            raise SystemExit(f"nbd_floor: NBD_OPT_GO refused (reply type 0x{kind:x})")
    raise SystemExit("nbd_floor: too many option replies")


def main():
    path = sys.argv[1]
    buf_size = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
    in_flight = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    size = handshake(s)
    buf = bytearray(buf_size)
    view = memoryview(buf)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    sent = done = 0
    lens = {}

    def request(handle, offset):
        n = min(buf_size, size - offset)
        lens[handle] = n
        s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, 0, handle, offset, n))

    while sent < size and len(lens) < in_flight:
        request(sent, sent)
        sent += lens[sent]
    while lens:
        magic, err, handle = struct.unpack(">IIQ", exact(s, 16))
        if magic != SIMPLE_MAGIC or err != 0 or handle not in lens:
            raise SystemExit(f"nbd_floor: bad reply (magic 0x{magic:x}, error {err})")
        n = lens.pop(handle)
        got = 0
        while got < n:
            k = s.recv_into(view[: n - got])
            if k == 0:
                raise SystemExit("nbd_floor: the server closed the connection")
            got += k
        done += n
        if sent < size:
            request(sent, sent)
            sent += lens[sent]
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    gib = done / (1 << 30)
    print(json.dumps({
        "bytes": done,
        "seconds": round(t1 - t0, 3),
        "cpu_seconds": round(cpu, 3),
        "user": round(r1.ru_utime - r0.ru_utime, 3),
        "sys": round(r1.ru_stime - r0.ru_stime, 3),
        "cpu_per_gib": round(cpu / gib, 3) if gib else 0,
        "voluntary_switches": r1.ru_nvcsw - r0.ru_nvcsw,
        "involuntary_switches": r1.ru_nivcsw - r0.ru_nivcsw,
    }))


if __name__ == "__main__":
    main()
