#!/usr/bin/env python3
"""Hostile clients against the phone file servers of the real `capstan serve`.

TFTP (raw UDP): truncated packets, bad opcodes, unknown modes, options
without values, absurd blksize/windowsize/timeout values, traversal names, a
WRQ (error 2), duplicate-ACK storms and packets from a wrong port during a
transfer. HTTP (raw TCP): CL+TE smuggling shape, duplicate Content-Length,
a 10 KB header (431), a 3 KB URL (414), POST (405), garbage, NUL and
traversal in the path. After each group a normal download over both
transports still returns the right bytes and /healthz answers; the server's
RSS does not grow much over 500 hostile requests (not checked under ASan,
whose quarantine holds freed memory on purpose).
"""

import os
import shutil
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from files_lib import *  # noqa: E402,F403

DEV = "SEP001122334455"
SGN = DEV + ".cnf.xml.sgn"
FW = "fw-64k.bin"
FW_SIZE = 65536 + 100  # not a multiple of any block size used
REPLY_WAIT = 1.0 * SLOW


class Udp:
    """One client socket; remembers the transfer's address once seen."""

    def __init__(self, port):
        self.port = port
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.settimeout(REPLY_WAIT)

    def send(self, pkt, addr=None):
        self.s.sendto(pkt, addr or ("127.0.0.1", self.port))

    def recv(self, wait=None):
        self.s.settimeout(wait or REPLY_WAIT)
        try:
            return self.s.recvfrom(70000)
        except socket.timeout:
            return None, None

    def close(self):
        self.s.close()


def opcode(pkt):
    return struct.unpack(">H", pkt[:2])[0] if pkt and len(pkt) >= 2 else None


def err_code(pkt):
    check(opcode(pkt) == ERROR and len(pkt) >= 4, "not an ERROR packet: %r" % pkt[:40])
    return struct.unpack(">H", pkt[2:4])[0]


def abort(u, addr):
    """Ends a transfer the probe started, as a client giving up does."""
    if addr is not None:
        u.send(struct.pack(">HH", ERROR, 0) + b"client gave up\0", addr)
        # Let the server see it before the next request: the listener reads
        # bursts of datagrams, and a client re-requesting within microseconds
        # of each abort can reach the 8-transfers-per-client limit.
        time.sleep(0.02)


def error_or_silence(port, pkt, codes, what):
    """The listener must answer |pkt| with an ERROR in |codes| (None in
    |codes| allows silence); never DATA or OACK."""
    u = Udp(port)
    try:
        u.send(pkt)
        reply, addr = u.recv()
        if reply is None:
            check(None in codes, "%s: no answer, expected an ERROR %s" % (what, codes))
            return None
        if opcode(reply) in (DATA, OACK):
            abort(u, addr)
            raise TestFailure("%s: the server started a transfer (%r)" % (what, reply[:40]))
        c = err_code(reply)
        check(c in codes, "%s: ERROR %d, expected one of %s" % (what, c, codes))
        return c
    finally:
        u.close()


def option_probe(port, options, what):
    """A read request with hostile options: the server ignores what it cannot
    accept (see handlers/tftp/tftp.h) and must answer with DATA of at most
    512 bytes, or an OACK whose values are legal and within its limits."""
    u = Udp(port)
    try:
        pkt = struct.pack(">H", RRQ) + FW.encode() + b"\0octet\0"
        for k, v in options:
            pkt += k + b"\0" + (v + b"\0" if v is not None else b"")
        u.send(pkt)
        reply, addr = u.recv()
        check(reply is not None, "%s: no answer" % what)
        op = opcode(reply)
        if op == DATA:
            check(len(reply) - 4 == 512, "%s: DATA of %d bytes without an OACK" % (what, len(reply) - 4))
        elif op == OACK:
            o = parse_oack(reply)
            if "blksize" in o:
                check(8 <= int(o["blksize"]) <= 1468, "%s: OACK blksize %s" % (what, o["blksize"]))
            if "windowsize" in o:
                check(1 <= int(o["windowsize"]) <= 16, "%s: OACK windowsize %s" % (what, o["windowsize"]))
            if "timeout" in o:
                check(1 <= int(o["timeout"]) <= 255, "%s: OACK timeout %s" % (what, o["timeout"]))
            if "tsize" in o:
                check(int(o["tsize"]) == FW_SIZE, "%s: OACK tsize %s" % (what, o["tsize"]))
        else:
            # tftp.h: bad options are ignored, never an error 8.
            raise TestFailure("%s: answered %r" % (what, reply[:60]))
        abort(u, addr)
        return op
    finally:
        u.close()


def sanity(srv, want_sgn, want_fw):
    """A normal download over both transports still works."""
    data, _ = tftp_get(srv.tftp_port, SGN, options={"blksize": 1428})
    check(data == want_sgn, "TFTP download of %s differs after the hostile round" % SGN)
    data, _ = tftp_get(srv.tftp_port, FW, options={"blksize": 1024, "windowsize": 4})
    check(data == want_fw, "TFTP download of %s differs after the hostile round" % FW)
    check(http_get(srv.http_port, SGN) == want_sgn, "HTTP download differs after the hostile round")
    check(srv.alive(), "server not healthy after the hostile round")


# --- TFTP groups ----------------------------------------------------------------


def tftp_malformed(srv):
    p = srv.tftp_port
    rrq_ok = struct.pack(">H", RRQ) + SGN.encode() + b"\0octet\0"
    cases = [
        (b"", (None, 4), "empty datagram"),
        (b"\x00", (None, 4), "one byte"),
        (b"\x00\x01", (4,), "RRQ opcode only"),
        (b"\x00\x01" + SGN.encode(), (4,), "RRQ name without NUL"),
        (b"\x00\x01" + SGN.encode() + b"\0", (4,), "RRQ without mode"),
        (b"\x00\x01" + SGN.encode() + b"\0octet", (4,), "RRQ mode without NUL"),
        (b"\x00\x01\0octet\0", (4,), "RRQ with an empty name"),
        (b"\x00\x01" + SGN.encode() + b"\0mail\0", (4,), "RRQ mode mail"),
        (b"\x00\x01" + SGN.encode() + b"\0\0", (4,), "RRQ empty mode"),
        (b"\x00\x01" + b"A" * 1500 + b"\0octet\0", (4,), "1.5 KB request"),
        (b"\x00\x01SEP\x01\x02.cnf.xml\0octet\0", (4,), "control characters in the name"),
        (b"\x00\x00" + rrq_ok[2:], (4,), "opcode 0"),
        (b"\x00\x07" + rrq_ok[2:], (4,), "opcode 7"),
        (b"\xff\xff" + rrq_ok[2:], (4,), "opcode 65535"),
        (struct.pack(">HH", DATA, 1) + b"x" * 10, (None, 4, 5), "DATA to the listener"),
        (struct.pack(">HH", ACK, 0), (None, 4, 5), "ACK to the listener"),
        (struct.pack(">HH", ERROR, 0) + b"x\0", (None,), "ERROR to the listener"),
        (struct.pack(">H", OACK) + b"blksize\x001024\0", (None, 4, 5), "OACK to the listener"),
    ]
    for pkt, codes, what in cases:
        error_or_silence(p, pkt, codes, what)
    log("ok TFTP malformed packets: %d cases" % len(cases))


def tftp_options(srv):
    p = srv.tftp_port
    big = b"9" * 40
    cases = [
        ([(b"blksize", None)], "blksize without value (last field)"),
        ([(b"blksize", b"")], "blksize empty"),
        ([(b"blksize", b"1024"), (b"tsize", None)], "tsize without value"),
        ([(b"blksize", b"0")], "blksize 0"),
        ([(b"blksize", b"7")], "blksize 7"),
        ([(b"blksize", b"65465")], "blksize 65465"),
        ([(b"blksize", b"65536")], "blksize 65536"),
        ([(b"blksize", b"4294967304")], "blksize 2^32+8"),
        ([(b"blksize", big)], "blksize 40 digits"),
        ([(b"blksize", b"-1")], "blksize -1"),
        ([(b"blksize", b"0x400")], "blksize hex"),
        ([(b"blksize", b"65464")], "blksize 65464 (legal, over the limit)"),
        ([(b"windowsize", b"0")], "windowsize 0"),
        ([(b"windowsize", b"65535")], "windowsize 65535"),
        ([(b"windowsize", b"65536")], "windowsize 65536"),
        ([(b"windowsize", big)], "windowsize 40 digits"),
        ([(b"timeout", b"0")], "timeout 0"),
        ([(b"timeout", b"256")], "timeout 256"),
        ([(b"tsize", b"abc")], "tsize abc"),
        ([(b"blksize", b"512"), (b"blksize", b"65464")], "duplicate blksize"),
        ([(b"BlKsIzE", b"1024"), (b"WINDOWSIZE", b"4")], "mixed case"),
        ([(b"x" * 200, b"y" * 200)], "unknown long option"),
    ]
    seen = set()
    for opts, what in cases:
        seen.add(option_probe(p, opts, what))
    log("ok TFTP hostile options: %d cases (answers: %s)" % (len(cases), sorted(seen)))


def tftp_names_and_wrq(srv):
    p = srv.tftp_port
    names = [
        "../../../../../../etc/passwd",
        "/etc/passwd",
        "..\\..\\etc\\passwd",
        "sub/../../secret.txt",
        "../secret.txt",
        "./../secret.txt",
        "link-out.txt",
        "%2e%2e/secret.txt",
        "ITL../../secret.tlv",
        "SEP../../secret.cnf.xml",
        "../" + SGN,
    ]
    for n in names:
        error_or_silence(p, rrq(n), (1, 2), "RRQ %r" % n)
    for n in (SGN, "newfile.bin", "../evil.bin"):
        c = error_or_silence(p, struct.pack(">H", WRQ) + n.encode() + b"\0octet\0", (2,), "WRQ %r" % n)
        check(c == 2, "WRQ %r: error %r, expected 2" % (n, c))
    check(not os.path.exists(os.path.join(srv.files_dir, "newfile.bin")), "WRQ created a file")
    log("ok TFTP traversal names refused, WRQ error 2")


def tftp_storm_and_wrong_port(srv, want_fw):
    """A 512-byte transfer of the firmware with, at block 20, 200 duplicate
    ACKs of block 19 and, from another socket, ACK/DATA/RRQ to the transfer
    port; the transfer completes with the right bytes and the stranger gets
    error 5."""
    m0 = srv.metrics()
    u = Udp(srv.tftp_port)
    stranger = Udp(srv.tftp_port)
    try:
        u.send(rrq(FW))
        data = bytearray()
        expect = 1
        peer = None
        stormed = False
        stranger_codes = []
        while True:
            pkt, addr = u.recv(5 * SLOW)
            check(pkt is not None, "storm transfer stalled at block %d" % expect)
            if peer is None:
                peer = addr
            check(addr == peer, "DATA from a second server port")
            check(opcode(pkt) == DATA, "storm transfer: opcode %r" % opcode(pkt))
            block = struct.unpack(">H", pkt[2:4])[0]
            if block != expect:
                continue  # a resend of a block we already have
            data += pkt[4:]
            u.send(struct.pack(">HH", ACK, block), peer)
            if block == 20 and not stormed:
                stormed = True
                for _ in range(200):
                    u.send(struct.pack(">HH", ACK, 19), peer)
                for pkt2 in (struct.pack(">HH", ACK, 21), struct.pack(">HH", DATA, 1) + b"zz", rrq(FW)):
                    stranger.send(pkt2, peer)
                    r, _ = stranger.recv()
                    check(r is not None, "wrong-port packet not answered")
                    stranger_codes.append(err_code(r))
            expect += 1
            if len(pkt) - 4 < 512:
                break
        check(bytes(data) == want_fw, "the stormed transfer delivered different bytes")
        check(stranger_codes == [5, 5, 5], "wrong-port packets got %s, expected error 5" % stranger_codes)
    finally:
        u.close()
        stranger.close()
    m1 = srv.metrics()
    dup = metric(m1, "capstan_tftp_duplicate_acks_ignored_total") - metric(m0, "capstan_tftp_duplicate_acks_ignored_total")
    wrong = metric(m1, "capstan_tftp_wrong_port_packets_total") - metric(m0, "capstan_tftp_wrong_port_packets_total")
    check(dup >= 150, "only %g duplicate ACKs counted as ignored" % dup)
    check(wrong == 3, "%g wrong-port packets counted, expected 3" % wrong)
    retrans = metric(m1, "capstan_tftp_retransmits_total") - metric(m0, "capstan_tftp_retransmits_total")
    # Sorcerer's Apprentice: duplicate ACKs must not trigger resends (a few
    # timer-driven resends are allowed on a loaded machine).
    check(retrans < 20, "%g retransmits during an ACK storm" % retrans)
    log("ok ACK storm (%g ignored, %g resends) and wrong-port packets (error 5)" % (dup, retrans))


# --- HTTP ------------------------------------------------------------------------------


def raw_http(port, payload, wait=None):
    """Sends |payload| on a fresh connection and reads until the server
    closes or goes quiet; returns the list of (status, head) seen."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait or 5 * SLOW)
    try:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        s.settimeout(1.5 * SLOW)
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    out = []
    while buf:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        check(sep, "truncated response head: %r" % buf[:200])
        lines = head.split(b"\r\n")
        check(lines[0].startswith(b"HTTP/1."), "bad status line %r" % lines[0])
        status = int(lines[0].split()[1])
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(b":")
            hdrs[k.strip().lower().decode()] = v.strip().decode()
        n = int(hdrs.get("content-length", "0"))
        out.append((status, hdrs, rest[:n]))
        buf = rest[n:]
    return out


def expect_one(port, payload, status, what):
    rs = raw_http(port, payload)
    check(rs, "%s: no response" % what)
    check(rs[0][0] == status, "%s: status %d, expected %d" % (what, rs[0][0], status))
    check(len(rs) == 1, "%s: %d responses, the connection went on: %s" % (what, len(rs), [r[0] for r in rs]))
    return rs[0]


def http_hostile(srv, files_dir):
    p = srv.http_port
    itl = b"GET /ITLFile.tlv HTTP/1.1\r\nHost: x\r\n\r\n"
    expect_one(p, b"GET /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + itl, 400, "CL+TE")
    expect_one(p, b"GET /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Length: 44\r\n\r\n0\r\n\r\n" + itl, 400, "TE+CL")
    expect_one(p, b"GET /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
               b"Content-Length: 38\r\n\r\n" + itl, 400, "duplicate Content-Length")
    expect_one(p, b"GET /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
               b"Content-Length: 0\r\n\r\n", 400, "duplicate equal Content-Length")
    expect_one(p, b"GET /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10240 + b"\r\n\r\n",
               431, "10 KB header")
    expect_one(p, b"GET /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\n" + b"X-Many: b\r\n" * 1100 + b"\r\n",
               431, "1100 header lines")
    expect_one(p, b"GET /" + b"A" * 3072 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "3 KB URL")
    _, hdrs, _ = expect_one(p, b"POST /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                            405, "POST")
    check("GET" in hdrs.get("allow", ""), "405 without Allow: GET, HEAD")
    for m in (b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"):
        st = raw_http(p, m + b" /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        check(st and st[0][0] in (400, 405), "%s: %s" % (m, [r[0] for r in st]))
    expect_one(p, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64), 400, "TLS hello")
    expect_one(p, b"GET /" + SGN.encode() + b" HTTP/9.9\r\nHost: x\r\n\r\n", 400, "HTTP/9.9")
    for path in (b"/../secret.txt", b"/..%2fsecret.txt", b"/%2e%2e/secret.txt", b"/ITL%00File.tlv",
                 b"/link-out.txt", b"/sub/../../secret.txt", b"//etc/passwd", b"/%2fetc%2fpasswd"):
        rs = raw_http(p, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        check(rs and rs[0][0] in (400, 404), "GET %s: %s" % (path, [r[0] for r in rs]))
        check(b"never be served" not in rs[0][2] and b"root:" not in rs[0][2], "GET %s leaked a file" % path)
    # Pipelining is legal: two requests, two answers, in order.
    rs = raw_http(p, b"GET /" + SGN.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n" + itl[:-2]
                  + b"Connection: close\r\n\r\n")
    check([r[0] for r in rs] == [200, 200], "pipelined GETs: %s" % [r[0] for r in rs])
    # A request cut in the middle, then the peer goes away.
    s = socket.create_connection(("127.0.0.1", p), timeout=5 * SLOW)
    s.sendall(b"GET /" + SGN.encode() + b" HTTP/1.1\r\nHo")
    s.close()
    log("ok HTTP hostile requests")


# --- memory over 500 hostile requests ------------------------------------------------


def hostile_burst(srv, n):
    """n hostile requests, half TFTP (answered at once, no transfer left
    running) and half HTTP."""
    u = Udp(srv.tftp_port)
    bad_http = [
        b"GET /" + SGN.encode() + b" HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /" + b"B" * 3000 + b" HTTP/1.1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /x HTTP/1.1\r\nX: " + b"c" * 9000 + b"\r\n\r\n",
        b"GET /../etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n",
    ]
    bad_udp = [
        b"\x00\x01" + b"n" * 40,
        b"\x00\x09junk",
        struct.pack(">H", WRQ) + b"w.bin\0octet\0",
        rrq("../../etc/passwd"),
        b"\x00\x01" + b"C" * 1100 + b"\0octet\0",
    ]
    try:
        for i in range(n):
            if i % 2:
                u.send(bad_udp[(i // 2) % len(bad_udp)])
                r, _ = u.recv()
                check(r is not None and opcode(r) == ERROR, "hostile UDP %d not answered with ERROR" % i)
            else:
                s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=5 * SLOW)
                try:
                    s.sendall(bad_http[(i // 2) % len(bad_http)])
                    s.settimeout(5 * SLOW)
                    got = s.recv(200)
                    check(got.startswith(b"HTTP/1.1 4"), "hostile HTTP %d: %r" % (i, got[:40]))
                except (ConnectionResetError, BrokenPipeError):
                    pass
                finally:
                    s.close()
    finally:
        u.close()


def main():
    base, data = new_data_dir("capstan-files-hostile-")
    files = os.path.join(base, "files")
    os.makedirs(os.path.join(files, "sub"))
    want_fw = os.urandom(FW_SIZE)
    with open(os.path.join(files, FW), "wb") as f:
        f.write(want_fw)
    with open(os.path.join(base, "secret.txt"), "w") as f:
        f.write("top secret: must never be served\n")
    os.symlink(os.path.join(base, "secret.txt"), os.path.join(files, "link-out.txt"))
    try:
        cli(data, "device", "add", DEV, "--operation", "install", "--auth", "null", "--key", "rsa2048")
        with Server(data, files_dir=files) as srv:
            want_sgn = http_get(srv.http_port, SGN)
            sanity(srv, want_sgn, want_fw)
            tftp_malformed(srv)
            sanity(srv, want_sgn, want_fw)
            tftp_options(srv)
            sanity(srv, want_sgn, want_fw)
            tftp_names_and_wrq(srv)
            sanity(srv, want_sgn, want_fw)
            tftp_storm_and_wrong_port(srv, want_fw)
            sanity(srv, want_sgn, want_fw)
            http_hostile(srv, files)
            sanity(srv, want_sgn, want_fw)

            hostile_burst(srv, 50)  # warm-up: lazily created state, allocator pools
            rss0 = srv.rss_kb()
            hostile_burst(srv, 500)
            rss1 = srv.rss_kb()
            sanity(srv, want_sgn, want_fw)
            log("RSS %d kB -> %d kB over 500 hostile requests" % (rss0, rss1))
            if SANITIZE:
                log("RSS bound not checked under ASan")
            else:
                check(rss1 - rss0 < 16 * 1024, "RSS grew by %d kB over 500 hostile requests" % (rss1 - rss0))
            m = srv.metrics()
            check(metric(m, "capstan_tftp_active_transfers") <= 1,
                  "%g TFTP transfers still active" % metric(m, "capstan_tftp_active_transfers"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
