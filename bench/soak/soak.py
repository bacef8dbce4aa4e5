#!/usr/bin/env python3
"""The soak (issue 13): a day of a large cluster's traffic compressed into a
few hours against one `capstan serve`, sampled every minute.

Run through bench/soak/soak.sh (see its header and bench/soak/README.md).
Python 3 standard library only; the phones are capstan-bench and
capstan-phone from the build, the admin changes and reloads the capstan CLI.

Drivers (threads, all running at once until the end):
  boot-http, boot-tftp  capstan-bench --storm --boot-only batches: phones of
                        the boot pool (SEP0000...) fetch and verify ITL and
                        signed configuration, at the day's boot rate
  enroll                capstan-bench batches over the enrollment pool
                        (SEPE...): the batch's devices are armed (device
                        import --rearm, operation install), then enroll; a
                        phone that holds an LSC from an earlier pass renews
                        by LSC, the others by null string. --max-retries:
                        a phone that comes back and ends enrolled is fine
  hostile               every few seconds one hostile client from 127.0.0.1
                        (the good phones come from 127.1.0.x): CAPF garbage
                        over TLS, plain text on the TLS port, a cut
                        handshake, a stalled phone, an unknown device, a
                        wrong authentication string; HTTP junk, traversal,
                        oversized header, slow partial request; TFTP junk,
                        traversal, WRQ, unknown files
  admin                 every --admin-every seconds one change, in turn:
                        device add / remove, device set, template set and
                        assign, trust add / remove, live settings
  reload                `capstan reload` every --reload-every seconds; the
                        server must log event=reload
  sampler               every 60 s: VmRSS (RssAnon, RssFile), open
                        descriptors, CPU, capstan_storage_size_bytes,
                        data.mdb size, the drivers' counters -> samples.csv

At the end: the least-squares slope per hour of each sampled series after
the warm-up, store bytes per enrollment, and the verdict, in summary.txt and
summary.json (written by this script whatever ends the run: its time, a
server death, SIGTERM/SIGINT).
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--hours", type=float, default=2.0, help="length of the run (default 2)")
p.add_argument("--compress", "--scale", type=float, default=12.0, dest="compress",
               help="how many times faster than the modelled day (default 12: a day in 2 h)")
p.add_argument("--phones", type=int, default=40000, help="phones in the cluster = the boot pool (default 40000)")
p.add_argument("--boots-per-phone", type=float, default=1.0, help="boots per phone per day (default 1)")
p.add_argument("--http-fraction", type=float, default=0.5, help="share of boots over HTTP, the rest TFTP (0.5)")
p.add_argument("--enroll-fraction", type=float, default=0.15,
               help="share of the cluster that enrolls or renews in the day (default 0.15)")
p.add_argument("--enroll-pool", type=int, default=2000,
               help="devices the enrollments cycle over (bounded: each re-enrolls, default 2000)")
p.add_argument("--hostile-every", type=float, default=5.0, help="seconds between hostile clients (5)")
p.add_argument("--admin-every", type=float, default=120.0, help="seconds between admin changes (120)")
p.add_argument("--reload-every", type=float, default=600.0, help="seconds between reloads (600)")
p.add_argument("--sample-every", type=float, default=60.0, help="seconds between samples (60)")
p.add_argument("--warmup-min", type=float, default=None,
               help="minutes left out of the slopes (default: 10%% of the run, at least 1)")
p.add_argument("--no-prewarm", action="store_true",
               help="start with a cold file cache (default: every boot-pool phone boots once before the run)")
p.add_argument("--build", default="build-rel")
p.add_argument("--out", default="/work/soak-run")
p.add_argument("--seed", type=int, default=13)
args = p.parse_args()

BUILD = os.path.abspath(args.build)
CAPSTAN = os.path.join(BUILD, "capstan")
BENCH = os.path.join(BUILD, "capstan-bench")
PHONE = os.path.join(BUILD, "capstan-phone")
for b in (CAPSTAN, BENCH, PHONE):
    if not os.access(b, os.X_OK):
        sys.exit(f"soak: {b} missing: build first (--build DIR)")
OUT = os.path.abspath(args.out)
os.makedirs(OUT, exist_ok=True)
DATA = os.path.join(OUT, "data")
WORK = os.path.join(OUT, "work")
for d in (DATA, WORK):
    if os.path.exists(d):
        shutil.rmtree(d)
os.makedirs(WORK)
LSC_DIR = os.path.join(WORK, "lsc")
os.makedirs(LSC_DIR)
KEYS = os.path.join(WORK, "keys")
random.seed(args.seed)

DURATION = args.hours * 3600.0
WARMUP = (args.warmup_min * 60.0) if args.warmup_min is not None else max(60.0, 0.1 * DURATION)
DAY = 86400.0
boot_rate = args.phones * args.boots_per_phone * args.compress / DAY  # boots/s
http_rate = boot_rate * args.http_fraction
tftp_rate = boot_rate - http_rate
enroll_rate = args.phones * args.enroll_fraction * args.compress / DAY  # enrollments/s

stop = threading.Event()
lock = threading.Lock()
events_f = open(os.path.join(OUT, "events.log"), "a", buffering=1)
batches_f = open(os.path.join(OUT, "batches.jsonl"), "a", buffering=1)
T0 = None


def now_s():
    return time.time() - T0 if T0 else 0.0


def log(msg):
    line = f"{time.strftime('%H:%M:%SZ', time.gmtime())} t={now_s():7.0f} {msg}"
    with lock:
        events_f.write(line + "\n")
    print(line, flush=True)


# Counters: kind -> {"ok": n, "fail": n, ...}; "fail" is a request that
# should have succeeded and did not. Hostile kinds count "done" and
# "unexpected" (the server accepted what it should refuse).
C = {}


def count(kind, key, n=1):
    with lock:
        C.setdefault(kind, {})
        C[kind][key] = C[kind].get(key, 0) + n


failures = []  # (t, kind, detail) of requests that should have succeeded


def failed(kind, detail):
    with lock:
        failures.append((round(now_s()), kind, detail[:400]))
    log(f"FAIL {kind}: {detail[:400]}")


def cli(*a, timeout=120, check=True, quiet=False):
    r = subprocess.run([CAPSTAN, *a, "--data-dir", DATA], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"capstan {' '.join(a)}: rc={r.returncode} {r.stderr.strip()[:300]}")
    return r


# ---------------------------------------------------------------- the server
server = None
ports = {}
server_log_path = os.path.join(OUT, "server.log")


def start_server():
    global server
    logf = open(server_log_path, "w")
    server = subprocess.Popen(
        [CAPSTAN, "serve", "--data-dir", DATA, "--capf-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0", "--tftp-listen", "127.0.0.1:0"],
        stdout=logf, stderr=logf, start_new_session=True)
    for _ in range(600):
        txt = open(server_log_path).read()
        if "event=ready" in txt:
            for k in ("capf", "http", "tftp", "admin"):
                m = re.search(rf"{k}_port=(\d+)", txt)
                if m:
                    ports[k] = int(m.group(1))
            break
        if server.poll() is not None:
            break
        time.sleep(0.1)
    if set(ports) != {"capf", "http", "tftp", "admin"}:
        sys.exit("soak: the server did not start; log:\n" + open(server_log_path).read()[-3000:])


def metrics():
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/metrics", timeout=20) as r:
        return r.read().decode()


def metric_value(text, name):
    tot, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            tot += float(line.rsplit(" ", 1)[1])
            seen = True
    return tot if seen else None


# ---------------------------------------------------------------- drivers
def sleep_until(t):
    while not stop.is_set():
        d = t - now_s()
        if d <= 0:
            return True
        stop.wait(min(d, 1.0))
    return False


def run_bench(argv, kind, timeout):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        failed(kind, f"capstan-bench did not end in {timeout:.0f} s")
        return None
    js = None
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            try:
                js = json.loads(line)
            except ValueError:
                pass
    if js is None:
        failed(kind, f"capstan-bench rc={r.returncode} gave no JSON: {r.stderr.strip()[-300:]}")
        return None
    js["_kind"], js["_t"] = kind, round(now_s())
    with lock:
        batches_f.write(json.dumps(js) + "\n")
    return js


def paced(kind, rate, one_batch, batch_s=60.0):
    """Calls one_batch(n, rate) with n phones so that the cumulative count
    follows rate x elapsed; each batch lasts about batch_s."""
    done = 0
    while not stop.is_set():
        remaining = DURATION - now_s()
        if remaining < 20:
            break
        due = rate * (now_s() + batch_s) - done
        n = int(min(due, rate * batch_s * 2, rate * (remaining - 15)))
        if n < 1:
            stop.wait(1.0)
            continue
        one_batch(n, rate)
        done += n


boot_next = {"http": 0, "tftp": 0}


def boot_batch(transport):
    port = ports[transport]

    def one(n, rate):
        # The boot pool is cycled: HTTP from its start, TFTP from its middle.
        start = boot_next[transport]
        base = 0 if transport == "http" else args.phones // 2
        first = (base + start) % args.phones
        n = min(n, args.phones - first)  # do not run past the pool's end
        boot_next[transport] = start + n
        js = run_bench([BENCH, "--storm", "--boot", transport, "--boot-only", "--phones", str(n),
                        "--name-prefix", "SEP0000", "--first", str(first), "--files", f"127.0.0.1:{port}",
                        "--rate", str(rate), "--concurrency", "200", "--bind-base", "127.1.0.1",
                        "--bind-count", "200", "--timeout", "30", "--json"],
                       "boot_" + transport, timeout=n / rate + 180)
        if js is None:
            count("boot_" + transport, "fail", n)
            return
        ok, err = js.get("ok", 0), js.get("errors", 0)
        count("boot_" + transport, "ok", ok)
        count("boot_" + transport, "files", js.get("files", 0) or 0)
        if err or ok != n:
            count("boot_" + transport, "fail", n - ok)
            failed("boot_" + transport, f"{n - ok} of {n} boots failed: " +
                   json.dumps({k: v for k, v in js.items() if k in ("failures", "outcomes", "reasons", "errors")})[:300])
    return one


enroll_next = [0]


def enroll_name(i):
    return "SEPE%011X" % i


def enroll_batch(n, rate):
    idx = [(enroll_next[0] + k) % args.enroll_pool for k in range(min(n, args.enroll_pool))]
    enroll_next[0] += len(idx)
    csv = os.path.join(WORK, "enroll.csv")
    renew = 0
    with open(csv, "w") as f:
        f.write("name,operation,auth_mode,auth_string,key,completes_by\n")
        for i in idx:
            name = enroll_name(i)
            lsc = os.path.exists(os.path.join(LSC_DIR, name + ".der"))
            renew += lsc
            f.write(f"{name},install,{'lsc' if lsc else 'null'},,rsa2048,\n")
    try:
        cli("device", "import", csv, "--rearm")
    except Exception as e:  # noqa: BLE001
        failed("enroll", f"arming the batch: {e}")
        count("enroll", "fail", len(idx))
        return
    js = run_bench([BENCH, "--connect", f"127.0.0.1:{ports['capf']}", "--devices", csv, "--lsc-dir", LSC_DIR,
                    "--rate", str(rate), "--concurrency", "50", "--max-retries", "8", "--retry-cap-seconds", "30",
                    "--key-cache", KEYS, "--bind-base", "127.1.0.1", "--bind-count", "200", "--timeout", "60",
                    "--json"], "enroll", timeout=len(idx) / rate + 400)
    if js is None:
        count("enroll", "fail", len(idx))
        return
    ok = js.get("enrollments", 0)
    count("enroll", "ok", ok)
    count("enroll", "renew_by_lsc", renew)
    count("enroll", "sessions", js.get("sessions", 0))
    count("enroll", "retried_phones", js.get("retried_phones", 0))
    count("enroll", "ok_after_retries", js.get("ok_after_retries", 0))
    if ok != len(idx):
        count("enroll", "fail", len(idx) - ok)
        failed("enroll", f"{len(idx) - ok} of {len(idx)} phones not enrolled: {json.dumps(js.get('failures'))[:300]}")


# ---- hostile clients (expected to be refused; the server must stay up and
# refuse them without disturbing the others)
def tcp(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s


def drain(s, limit=1 << 16):
    got = b""
    try:
        while len(got) < limit:
            b = s.recv(4096)
            if not b:
                break
            got += b
    except (socket.timeout, OSError):
        pass
    return got


def tls_ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def h_capf_garbage_tls():
    with tls_ctx().wrap_socket(tcp(ports["capf"]), server_hostname="capf") as s:
        s.sendall(os.urandom(random.randint(1, 2000)))
        drain(s)
    return "closed"


def h_capf_bad_header():
    # A CAPF header with a huge length after TLS.
    with tls_ctx().wrap_socket(tcp(ports["capf"]), server_hostname="capf") as s:
        s.sendall(bytes([0x55, 0x02]) + os.urandom(4) + b"\xff\xff" + os.urandom(64))
        drain(s)
    return "closed"


def h_capf_plaintext():
    s = tcp(ports["capf"])
    s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(200))
    drain(s)
    s.close()
    return "closed"


def h_capf_cut_handshake():
    s = tcp(ports["capf"])
    # The start of a TLS ClientHello record, then a reset.
    s.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]) + os.urandom(40))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    return "reset"


def phone_json(*extra, timeout=30):
    r = subprocess.run([PHONE, "--connect", f"127.0.0.1:{ports['capf']}", "--json", *extra],
                       capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"result": "none", "rc": r.returncode}


def h_capf_unknown_device():
    js = phone_json("--name", "SEPDEAD%08X" % random.randint(0, 0xFFFFFFF))
    if js.get("result") == "ok":
        count("hostile", "unexpected")
        log(f"UNEXPECTED unknown device got an operation: {js}")
    return f"{js.get('result')}_{js.get('reason')}"


def h_capf_wrong_string():
    # A device armed with a string; the hostile phone guesses. Re-armed by
    # the admin thread's rotation? No: its lockout is its own business.
    js = phone_json("--name", "SEPBAD000000001", "--auth", "string", "--auth-string", "%06d" % random.randint(0, 999999))
    if js.get("result") == "ok" and js.get("operation") == "install":
        count("hostile", "unexpected")
        log(f"UNEXPECTED a guessed string enrolled: {js}")
    return f"{js.get('result')}_{js.get('reason')}_{js.get('error')}"


def h_capf_stall():
    js = phone_json("--name", "SEPBAD000000002", "--stall", "--timeout", "4", timeout=20)
    return f"{js.get('result')}_{js.get('error')}"


def h_http_junk():
    s = tcp(ports["http"])
    s.sendall(os.urandom(random.randint(1, 3000)) + b"\r\n\r\n")
    got = drain(s)
    s.close()
    return got.split(b"\r\n", 1)[0].decode("latin1")[:40] or "closed"


def http_get_status(path, extra=b""):
    s = tcp(ports["http"])
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n")
    got = drain(s)
    s.close()
    m = re.match(rb"HTTP/1\.[01] (\d+)", got)
    return int(m.group(1)) if m else 0


def h_http_traversal():
    path = random.choice([b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/..%2fdata.mdb",
                          b"/SEP000000000001.cnf.xml.sgn/../../data.mdb", b"//etc/passwd"])
    st = http_get_status(path)
    if st == 200:
        count("hostile", "unexpected")
        log(f"UNEXPECTED HTTP 200 for {path!r}")
    return f"http_{st}"


def h_http_big_header():
    st = http_get_status(b"/ITLFile.tlv", b"X-Junk: " + b"a" * random.choice([9000, 70000]) + b"\r\n")
    return f"http_{st}"


def h_http_unknown():
    st = http_get_status(b"/SEPFFFF%08X.cnf.xml.sgn" % random.randint(0, 0xFFFFFFF))
    if st == 200:
        count("hostile", "unexpected")
    return f"http_{st}"


def h_http_slow():
    s = tcp(ports["http"])
    s.sendall(b"GET /ITLFile.tlv HTTP/1.1\r\nHo")
    time.sleep(random.uniform(1, 4))
    s.close()
    return "abandoned"


def udp_exchange(pkt, wait=2.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(wait)
    s.sendto(pkt, ("127.0.0.1", ports["tftp"]))
    try:
        data, _ = s.recvfrom(70000)
    except (socket.timeout, OSError):
        data = b""
    s.close()
    return data


def tftp_result(data):
    if len(data) >= 4 and data[1] == 5:
        return f"tftp_error_{data[3]}"
    if len(data) >= 2 and data[1] in (3, 6):
        return "tftp_data"
    return "tftp_silent"


def h_tftp_junk():
    return tftp_result(udp_exchange(os.urandom(random.randint(1, 600))))


def h_tftp_traversal():
    name = random.choice([b"../../etc/passwd", b"/etc/passwd", b"..\\..\\data.mdb", b"data.mdb"])
    r = tftp_result(udp_exchange(b"\x00\x01" + name + b"\x00octet\x00"))
    if r == "tftp_data":
        count("hostile", "unexpected")
        log(f"UNEXPECTED TFTP data for {name!r}")
    return r


def h_tftp_wrq():
    r = tftp_result(udp_exchange(b"\x00\x02SEP000000000001.cnf.xml\x00octet\x00"))
    if r == "tftp_data":
        count("hostile", "unexpected")
    return r


def h_tftp_unknown():
    return tftp_result(udp_exchange(b"\x00\x01SEPFFFF%08X.cnf.xml.sgn\x00octet\x00blksize\x001428\x00" %
                                    random.randint(0, 0xFFFFFFF)))


HOSTILE = [h_capf_garbage_tls, h_capf_bad_header, h_capf_plaintext, h_capf_cut_handshake, h_capf_unknown_device,
           h_capf_wrong_string, h_capf_stall, h_http_junk, h_http_traversal, h_http_big_header, h_http_unknown,
           h_http_slow, h_tftp_junk, h_tftp_traversal, h_tftp_wrq, h_tftp_unknown]


def hostile_loop():
    k = 0
    while not stop.is_set() and now_s() < DURATION - 10:
        f = HOSTILE[k % len(HOSTILE)]
        k += 1
        name = f.__name__[2:]
        try:
            r = f()
        except Exception as e:  # noqa: BLE001 (refused is the point)
            r = type(e).__name__
        count("hostile", "done")
        count("hostile:" + name, r)
        stop.wait(args.hostile_every)


# ---- admin changes
TEMPLATES = [os.path.join(WORK, "tpl%d.xml" % i) for i in (0, 1)]
TRUST_CA = os.path.join(WORK, "soak-ca.pem")


def make_admin_files():
    for i, path in enumerate(TEMPLATES):
        with open(path, "w") as f:
            f.write('<?xml version="1.0" encoding="UTF-8"?>\n<device>\n  <deviceProtocol>SIP</deviceProtocol>\n'
                    f"  <sshUserId>soak{i}</sshUserId>\n  <userLocale><name>English_United_States</name></userLocale>\n"
                    "</device>\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", os.path.join(WORK, "soak-ca.key"), "-out", TRUST_CA, "-days", "30",
                    "-subj", "/CN=Soak Test Root/O=capstan soak",
                    "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                    "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", TRUST_CA, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    import hashlib
    return hashlib.sha256(der).hexdigest()


def boot_name(i):
    return "SEP0000%08X" % i


def admin_actions(trust_fp):
    st = {"n": 0}

    def dev_add():
        st["n"] += 1
        cli("device", "add", "SEPA%011X" % st["n"], "--operation", "install", "--auth", "null", "--key", "ec256")

    def dev_remove():
        cli("device", "remove", "SEPA%011X" % st["n"])

    def dev_set():
        name = boot_name(random.randrange(args.phones))
        cli("device", "set", name, "--key", random.choice(["rsa2048", "ec256", "rsa3072"]))

    def tpl_set():
        k = st.setdefault("tpl", 0)
        st["tpl"] = k + 1
        if k == 0:
            cli("template", "add", "soak", TEMPLATES[0])
        else:
            cli("template", "set", "soak", TEMPLATES[k % 2])
        cli("template", "assign", "soak", *[boot_name(random.randrange(args.phones)) for _ in range(20)])

    def trust_add():
        cli("trust", "add", TRUST_CA)

    def trust_remove():
        cli("trust", "remove", trust_fp)

    def setting():
        k = st.setdefault("set", 0)
        st["set"] = k + 1
        if k % 3 == 0:
            cli("keepalive", "set", str(15 + k % 2 * 5))
        elif k % 3 == 1:
            cli("config", "set", "audit-retention-days", str(365 - k % 2))
        else:
            cli("config", "set", "validity-days", str(1825 - k % 2))

    def bulk_set():
        cli("device", "bulk-set", "--name-prefix", "SEPBAD", "--operation", "install")

    def report():
        cli("report", "status")

    return [dev_add, dev_set, tpl_set, trust_add, setting, dev_remove, bulk_set, trust_remove, report, setting]


def admin_loop(actions):
    k = 0
    while sleep_until(WARMUP / 2 + k * args.admin_every) and now_s() < DURATION - 15:
        a = actions[k % len(actions)]
        k += 1
        try:
            a()
            count("admin", "ok")
            count("admin:" + a.__name__, "ok")
        except Exception as e:  # noqa: BLE001
            count("admin", "fail")
            failed("admin", f"{a.__name__}: {e}")


def reloads_logged():
    return open(server_log_path).read().count("event=reload")


def reload_loop():
    k = 1
    while sleep_until(k * args.reload_every) and now_s() < DURATION - 30:
        k += 1
        before = reloads_logged()
        try:
            cli("reload", timeout=30)
        except Exception as e:  # noqa: BLE001
            count("reload", "fail")
            failed("reload", str(e))
            continue
        for _ in range(200):
            if reloads_logged() > before:
                break
            time.sleep(0.1)
        if reloads_logged() > before:
            count("reload", "ok")
            log("reload ok")
        else:
            count("reload", "fail")
            failed("reload", "no event=reload in the server log within 20 s")


# ---- sampling
CSV_COLS = ["t_s", "utc", "rss_kb", "rss_anon_kb", "rss_file_kb", "fds", "threads", "cpu_s", "store_metric_bytes",
            "mdb_bytes", "mdb_alloc_bytes", "boot_http_ok", "boot_http_fail", "boot_tftp_ok", "boot_tftp_fail",
            "enroll_ok", "enroll_fail", "enroll_sessions", "hostile_done", "hostile_unexpected", "admin_ok",
            "admin_fail", "reload_ok", "reload_fail"]
samples = []
csv_f = None


def proc_status(pid):
    d = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        d[k] = v.strip()
    return d


def kb(v):
    return int(v.split()[0]) if v else 0


def sample():
    pid = server.pid
    st = proc_status(pid)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    try:
        store = metric_value(metrics(), "capstan_storage_size_bytes")
    except Exception:  # noqa: BLE001
        store = None
    mdb = os.stat(os.path.join(DATA, "data.mdb"))
    g = lambda k, key: C.get(k, {}).get(key, 0)  # noqa: E731
    row = {"t_s": round(now_s(), 1), "utc": time.strftime("%H:%M:%SZ", time.gmtime()),
           "rss_kb": kb(st.get("VmRSS")), "rss_anon_kb": kb(st.get("RssAnon")), "rss_file_kb": kb(st.get("RssFile")),
           "fds": fds, "threads": int(st.get("Threads", 0)), "cpu_s": round(cpu, 2),
           "store_metric_bytes": int(store) if store is not None else "", "mdb_bytes": mdb.st_size,
           "mdb_alloc_bytes": mdb.st_blocks * 512,
           "boot_http_ok": g("boot_http", "ok"), "boot_http_fail": g("boot_http", "fail"),
           "boot_tftp_ok": g("boot_tftp", "ok"), "boot_tftp_fail": g("boot_tftp", "fail"),
           "enroll_ok": g("enroll", "ok"), "enroll_fail": g("enroll", "fail"),
           "enroll_sessions": g("enroll", "sessions"), "hostile_done": g("hostile", "done"),
           "hostile_unexpected": g("hostile", "unexpected"), "admin_ok": g("admin", "ok"),
           "admin_fail": g("admin", "fail"), "reload_ok": g("reload", "ok"), "reload_fail": g("reload", "fail")}
    samples.append(row)
    csv_f.write(",".join(str(row[c]) for c in CSV_COLS) + "\n")
    csv_f.flush()
    log("sample " + " ".join(f"{c}={row[c]}" for c in CSV_COLS[2:11]) +
        f" boots={row['boot_http_ok']}+{row['boot_tftp_ok']} enroll={row['enroll_ok']} fails="
        f"{row['boot_http_fail'] + row['boot_tftp_fail'] + row['enroll_fail'] + row['admin_fail'] + row['reload_fail']}")


def sampler_loop():
    k = 0
    while True:
        if server.poll() is not None:
            failed("server", f"the server exited (rc={server.returncode}) during the run")
            stop.set()
            return
        try:
            sample()
        except Exception as e:  # noqa: BLE001
            log(f"sample failed: {e}")
        k += 1
        if not sleep_until(k * args.sample_every) or now_s() >= DURATION:
            return


# ---- the end
def slope(xs, ys):
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx
    res = [y - (my + b * (x - mx)) for x, y in zip(xs, ys)]
    se = (sum(r * r for r in res) / (n - 2) / sxx) ** 0.5 if n > 2 else 0.0
    return b, se, my


def summarize(end_reason, metrics_end):
    post = [s for s in samples if s["t_s"] >= WARMUP]
    span_h = (post[-1]["t_s"] - post[0]["t_s"]) / 3600 if len(post) >= 2 else 0
    series = {}
    for key, unit in (("rss_kb", "KiB"), ("rss_anon_kb", "KiB"), ("rss_file_kb", "KiB"), ("fds", "fds"),
                      ("threads", "threads"), ("store_metric_bytes", "bytes"), ("mdb_bytes", "bytes"),
                      ("mdb_alloc_bytes", "bytes")):
        pts = [(s["t_s"] / 3600, float(s[key])) for s in post if s[key] != ""]
        r = slope([x for x, _ in pts], [y for _, y in pts])
        if r:
            series[key] = {"slope_per_h": r[0], "stderr_per_h": r[1], "mean": r[2], "unit": unit,
                           "first": pts[0][1], "last": pts[-1][1], "min": min(y for _, y in pts),
                           "max": max(y for _, y in pts), "n": len(pts)}
    cpu_cores = None
    if len(samples) >= 2 and samples[-1]["t_s"] > samples[0]["t_s"]:
        cpu_cores = (samples[-1]["cpu_s"] - samples[0]["cpu_s"]) / (samples[-1]["t_s"] - samples[0]["t_s"])
    per_enr = None
    if len(post) >= 2 and post[-1]["enroll_ok"] > post[0]["enroll_ok"]:
        de = post[-1]["enroll_ok"] - post[0]["enroll_ok"]
        per_enr = {k: (post[-1][k] - post[0][k]) / de for k in ("store_metric_bytes", "mdb_bytes", "mdb_alloc_bytes")
                   if post[-1][k] != "" and post[0][k] != ""}
        per_enr["enrollments"] = de
    g = lambda k, key: C.get(k, {}).get(key, 0)  # noqa: E731
    should_fail = sum(g(k, "fail") for k in ("boot_http", "boot_tftp", "enroll", "admin", "reload")) + \
        sum(1 for f in failures if f[1] in ("prewarm", "server"))
    # Flat: the fitted change over the measured span is within the noise
    # allowance: RssAnon (the heap; RssFile is the store's mapped pages and
    # follows the store) < max(2 MiB, 2% of its mean); descriptors and threads < 2.
    flat = {}
    if "rss_anon_kb" in series:
        s = series["rss_anon_kb"]
        flat["rss_anon"] = abs(s["slope_per_h"] * span_h) < max(2048, 0.02 * s["mean"])
    if "fds" in series:
        flat["fds"] = abs(series["fds"]["slope_per_h"] * span_h) < 2
    if "threads" in series:
        flat["threads"] = abs(series["threads"]["slope_per_h"] * span_h) < 2
    server_ok = end_reason != "server died"
    verdict = {"no_failed_request_that_should_succeed": should_fail == 0 and server_ok,
               "rss_anon_flat": flat.get("rss_anon"), "fds_flat": flat.get("fds"), "threads_flat": flat.get("threads"),
               "hostile_unexpected": g("hostile", "unexpected")}
    verdict["pass"] = bool(verdict["no_failed_request_that_should_succeed"] and flat.get("rss_anon") and
                           flat.get("fds") and verdict["hostile_unexpected"] == 0 and len(post) >= 3)
    out = {"end_reason": end_reason, "hours": args.hours, "duration_s": round(now_s()),
           "warmup_s": WARMUP, "post_warmup_span_h": span_h, "samples": len(samples),
           "model": MODEL, "prewarm": PREWARM, "counters": C, "failures": failures[:200], "series": series,
           "store_per_enrollment": per_enr, "server_cpu_cores": cpu_cores, "verdict": verdict,
           "metrics_end": metrics_end, "command": " ".join(sys.argv)}
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    L = []
    L.append(f"capstan soak: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime(T0))} to "
             f"{time.strftime('%H:%MZ', time.gmtime())}, {now_s() / 3600:.2f} h, ended: {end_reason}")
    L.append(f"command: {' '.join(sys.argv)}")
    L.append("model: " + MODEL["text"])
    if PREWARM:
        L.append(f"prewarm (before the run, not in the samples): {PREWARM['ok']} of {PREWARM['phones']} phones booted "
                 f"over HTTP in {PREWARM['wall_s']} s ({PREWARM['errors']} errors); file cache filled: RssAnon "
                 f"{PREWARM['rss_anon_kb_before']} -> {PREWARM['rss_anon_kb_after']} KiB, "
                 f"{PREWARM['rss_anon_bytes_per_phone']:.0f} B per phone")
    else:
        L.append("no prewarm: the file cache fills during the run (RssAnon grows by each new phone's signed files)")
    L.append(f"samples: {len(samples)} (every {args.sample_every:.0f} s); slopes over {len(post)} samples after a "
             f"{WARMUP / 60:.0f}-min warm-up ({span_h:.2f} h)")
    L.append("")
    L.append("slopes (least squares, per hour; +- standard error; mean, first..last after warm-up):")
    for k, s in series.items():
        L.append(f"  {k:20s} {s['slope_per_h']:+14.1f} {s['unit']}/h  +-{s['stderr_per_h']:.1f}   mean {s['mean']:.0f}"
                 f"  {s['first']:.0f}..{s['last']:.0f} (min {s['min']:.0f} max {s['max']:.0f})")
    if per_enr:
        L.append(f"store growth per enrollment after warm-up ({per_enr['enrollments']} enrollments): " +
                 ", ".join(f"{k} {v:.0f} B" for k, v in per_enr.items() if k != "enrollments"))
    if cpu_cores is not None:
        L.append(f"server CPU: {cpu_cores:.3f} cores on average")
    L.append("")
    L.append("requests:")
    for k in sorted(C):
        L.append(f"  {k:28s} " + " ".join(f"{kk}={vv}" for kk, vv in sorted(C[k].items())))
    L.append("")
    L.append(f"failed requests that should have succeeded: {should_fail}" + ("" if server_ok else " (server died)"))
    for t, kind, d in failures[:30]:
        L.append(f"  t={t}s {kind}: {d}")
    L.append(f"hostile clients the server accepted (should be 0): {g('hostile', 'unexpected')}")
    L.append(f"flat: RssAnon {flat.get('rss_anon')}, descriptors {flat.get('fds')}, threads {flat.get('threads')} "
             "(fitted change over the span < max(2 MiB, 2% of mean) for RssAnon, < 2 for descriptors and threads)")
    L.append(f"VERDICT: {'PASS' if verdict['pass'] else 'FAIL'}")
    txt = "\n".join(L) + "\n"
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write(txt)
    print(txt, flush=True)


MODEL = {}
PREWARM = {}


def main():
    global T0, csv_f
    ncpu = os.cpu_count()
    MODEL.update({
        "cluster_phones": args.phones, "boots_per_phone_per_day": args.boots_per_phone,
        "enroll_fraction_per_day": args.enroll_fraction, "compression": args.compress,
        "boot_rate_per_s": boot_rate, "http_boot_rate_per_s": http_rate, "tftp_boot_rate_per_s": tftp_rate,
        "enroll_rate_per_s": enroll_rate, "enroll_pool": args.enroll_pool, "hostile_every_s": args.hostile_every,
        "admin_every_s": args.admin_every, "reload_every_s": args.reload_every,
        "day_fraction_covered": DURATION * args.compress / DAY})
    MODEL["text"] = (
        f"a cluster of {args.phones} phones; per day each boots {args.boots_per_phone:g}x "
        f"({args.phones * args.boots_per_phone:.0f} boots: {args.http_fraction:.0%} HTTP, rest TFTP; ITL + signed config) "
        f"and {args.enroll_fraction:.0%} enroll or renew ({args.phones * args.enroll_fraction:.0f} CAPF enrollments, "
        f"cycling over {args.enroll_pool} devices, renewals by LSC); compressed {args.compress:g}x: "
        f"{boot_rate:.2f} boots/s ({http_rate:.2f} HTTP + {tftp_rate:.2f} TFTP), {enroll_rate:.3f} enrollments/s; "
        f"a hostile client every {args.hostile_every:g} s, an admin change every {args.admin_every:g} s "
        f"({args.admin_every * args.compress / 60:.0f} min of the day), a reload every {args.reload_every:g} s; "
        f"this run covers {DURATION * args.compress / DAY:.2f} day(s)")
    print(f"soak: {MODEL['text']}", flush=True)
    print(f"machine: {ncpu} cores, load {open('/proc/loadavg').read().split()[:3]}, build {BUILD}", flush=True)

    # Set-up: the store, the devices, the files for the admin changes.
    cli("init")
    names = os.path.join(WORK, "devices.csv")
    with open(names, "w") as f:
        f.write("name,operation,auth_mode,auth_string,key,completes_by\n")
        for i in range(args.phones):
            f.write(f"{boot_name(i)},none,null,,rsa2048,\n")
        for i in range(args.enroll_pool):
            f.write(f"{enroll_name(i)},none,null,,rsa2048,\n")
    cli("device", "import", names, timeout=600)
    cli("device", "add", "SEPBAD000000001", "--operation", "install", "--auth", "string", "--auth-string", "4242424242")
    cli("device", "add", "SEPBAD000000002", "--operation", "install", "--auth", "null")
    trust_fp = make_admin_files()
    actions = admin_actions(trust_fp)
    # The bench's key pool, once (RSA generation would otherwise be in every batch).
    subprocess.run([BENCH, "--phones", "1", "--print-names", "--key-cache", KEYS], capture_output=True)

    start_server()
    print(f"server pid {server.pid} ports {ports}", flush=True)
    if not args.no_prewarm:
        # The steady state of a server that has been up for a day: every
        # phone of the cluster booted once already, so the file cache holds
        # its signed files (it is bounded by entries, 200,000, not bytes).
        # What that costs is measured here, before the run.
        a0 = kb(proc_status(server.pid).get("RssAnon"))
        t = time.time()
        js = None
        try:
            r = subprocess.run([BENCH, "--storm", "--boot", "http", "--boot-only", "--phones", str(args.phones),
                                "--name-prefix", "SEP0000", "--files", f"127.0.0.1:{ports['http']}",
                                "--concurrency", "100", "--bind-base", "127.1.0.1", "--bind-count", "200",
                                "--timeout", "60", "--json"], capture_output=True, text=True, timeout=3600)
            js = json.loads([x for x in r.stdout.splitlines() if x.startswith("{")][-1])
        except Exception as e:  # noqa: BLE001
            print(f"prewarm failed: {e}", flush=True)
        a1 = kb(proc_status(server.pid).get("RssAnon"))
        PREWARM.update({"phones": args.phones, "ok": js.get("ok") if js else None,
                        "errors": js.get("errors") if js else None, "wall_s": round(time.time() - t, 1),
                        "rss_anon_kb_before": a0, "rss_anon_kb_after": a1,
                        "rss_anon_bytes_per_phone": (a1 - a0) * 1024 / max(1, args.phones)})
        print(f"prewarm: {PREWARM}", flush=True)
        if not js or js.get("ok") != args.phones:
            failed("prewarm", f"{args.phones - (js.get('ok', 0) if js else 0)} of {args.phones} prewarm boots failed")
    with open(os.path.join(OUT, "metrics_start.txt"), "w") as f:
        f.write(metrics())
    csv_f = open(os.path.join(OUT, "samples.csv"), "w")
    csv_f.write(",".join(CSV_COLS) + "\n")
    T0 = time.time()
    end = {"reason": "time"}

    def on_signal(signum, _frame):
        end["reason"] = f"signal {signum}"
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    threads = [threading.Thread(target=sampler_loop, name="sampler"),
               threading.Thread(target=paced, args=("boot_http", http_rate, boot_batch("http")), name="boot_http"),
               threading.Thread(target=paced, args=("boot_tftp", tftp_rate, boot_batch("tftp")), name="boot_tftp"),
               threading.Thread(target=paced, args=("enroll", enroll_rate, enroll_batch), name="enroll"),
               threading.Thread(target=hostile_loop, name="hostile"),
               threading.Thread(target=admin_loop, args=(actions,), name="admin"),
               threading.Thread(target=reload_loop, name="reload")]
    for t in threads:
        t.daemon = True
        t.start()
    while not stop.is_set() and now_s() < DURATION:
        stop.wait(1.0)
        if server.poll() is not None:
            end["reason"] = "server died"
            stop.set()
    stop.set()
    for t in threads:
        t.join(timeout=600)
    if server.poll() is None:
        try:
            sample()  # the last one, after every driver ended
        except Exception as e:  # noqa: BLE001
            log(f"final sample failed: {e}")
    else:
        end["reason"] = "server died"
        failed("server", f"the server exited (rc={server.returncode})")
    metrics_end = {}
    try:
        mt = metrics()
        with open(os.path.join(OUT, "metrics_end.txt"), "w") as f:
            f.write(mt)
        for name in ("capstan_storage_size_bytes", "capstan_capf_sessions_total", "capstan_http_requests_total",
                     "capstan_tftp_requests_total", "capstan_tftp_transfers_total", "capstan_http_transfers_total"):
            v = metric_value(mt, name)
            if v is not None:
                metrics_end[name] = v
    except Exception as e:  # noqa: BLE001
        log(f"metrics at the end: {e}")
    if server.poll() is None:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    try:
        r = subprocess.run([CAPSTAN, "audit", "list", "--json", "--data-dir", DATA], capture_output=True, text=True,
                           timeout=300)
        metrics_end["audit_events"] = len(json.loads(r.stdout))
    except Exception:  # noqa: BLE001
        pass
    summarize(end["reason"], metrics_end)


if __name__ == "__main__":
    main()
