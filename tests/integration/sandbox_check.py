#!/usr/bin/env python3
"""Checks a server run traced with strace against the sandbox of a systemd unit.

    sandbox_check.py UNIT EXE CWD TRACE_FILE...

The test machine's PID 1 is not systemd, so the unit cannot run as it will in
production. Instead the server runs under `strace -f -ff` (as the unit's user,
with its capabilities, by setpriv) and this script checks that nothing it did
would be refused by the unit's sandbox:

- SystemCallFilter=: every system call is in the allowed set, the groups
  expanded with `systemd-analyze syscall-filter` (a call outside it would fail
  with SystemCallErrorNumber= in production);
- RestrictAddressFamilies=: every socket() family is allowed;
- MemoryDenyWriteExecute=yes: no writable and executable mapping, no
  mprotect() to executable;
- ProtectSystem=strict, PrivateTmp=, StateDirectory=, ReadWritePaths=: every
  file opened for writing, created, removed or renamed is in a writable place;
- ProtectHome=yes: nothing under /home, /root or /run/user;
- ProcSubset=pid: nothing under /proc but the process's own entries.

Only what the executable did after execve(EXE) counts (setpriv's own calls
before it are systemd's part in production). Relative paths are taken from
CWD (the unit's WorkingDirectory=). Prints one line per problem and exits 1
when there is any, else prints a summary and exits 0.
"""
import collections
import os
import re
import subprocess
import sys

CALL = re.compile(r"^(?:\[pid\s+\d+\]\s+)?([a-z_][a-z0-9_]*)\((.*)$")
RESUMED = re.compile(r"^(?:\[pid\s+\d+\]\s+)?<\.\.\. ([a-z_][a-z0-9_]*) resumed>")
PATH_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unit_settings(path):
    """The unit's [Service] settings: name -> list of values, in order."""
    settings = collections.defaultdict(list)
    section = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]" and "=" in line:
                k, v = line.split("=", 1)
                settings[k.strip()].append(v.strip())
    return settings


def syscall_groups():
    """@group -> set of members (calls or @groups), from systemd-analyze."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], check=True,
                         capture_output=True, text=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), set())
        elif line.startswith("    ") and cur is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                cur.add(item)
        elif not line.strip():
            cur = None
    return groups


def expand(names, groups, seen=None):
    seen = set() if seen is None else seen
    calls = set()
    for n in names:
        if n.startswith("@"):
            if n in seen:
                continue
            seen.add(n)
            if n not in groups:
                raise SystemExit(f"unknown system call group {n}")
            calls |= expand(groups[n], groups, seen)
        else:
            calls.add(n)
    return calls


def allowed_syscalls(values, groups):
    """systemd's semantics: the first setting decides allow- or deny-list;
    later ones add to the allow list or remove from it. @default is always
    allowed in an allow list."""
    allowed, deny_only = None, set()
    for v in values:
        neg = v.startswith("~")
        names = v.lstrip("~").split()
        calls = expand(names, groups)
        if allowed is None:
            if neg:
                allowed = "deny"
                deny_only |= calls
            else:
                allowed = calls | expand(["@default"], groups)
        elif allowed == "deny":
            if neg:
                deny_only |= calls
            else:
                deny_only -= calls
        elif neg:
            allowed -= calls
        else:
            allowed |= calls
    return allowed, deny_only


def read_trace(files, exe):
    """(name, args) of every call after execve(exe)."""
    calls = []
    started = False
    # The file holding the execve first, so that the threads' files (which
    # exist only after it) are read as the executable's.
    texts = {}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts[path] = f.read().splitlines()
    order = sorted(files, key=lambda p: not any(
        l.startswith(f'execve("{exe}"') for l in texts[p]))
    for path in order:
        for line in texts[path]:
            if not started:
                if line.startswith(f'execve("{exe}"') and not re.search(r"= -1 ", line):
                    started = True
                continue
            m = CALL.match(line)
            if m:
                calls.append((m.group(1), m.group(2)))
                continue
            m = RESUMED.match(line)
            if m:
                calls.append((m.group(1), ""))
    if not started:
        raise SystemExit(f"no successful execve(\"{exe}\") in the trace")
    return calls


def under(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    unit, exe, cwd, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    s = unit_settings(unit)
    groups = syscall_groups()
    calls = read_trace(files, exe)
    problems = []

    allowed, denied = allowed_syscalls(s.get("SystemCallFilter", []), groups)
    used = collections.Counter(name for name, _ in calls)
    for name in sorted(used):
        if (allowed not in (None, "deny") and name not in allowed) or name in denied:
            problems.append(f"SystemCallFilter: {name}() ({used[name]} calls) is not allowed")

    families = set(" ".join(s.get("RestrictAddressFamilies", [])).split())
    for name, args in calls:
        if name == "socket" and families:
            fam = args.split(",", 1)[0].strip()
            if fam not in families:
                problems.append(f"RestrictAddressFamilies: socket({fam}) is not allowed")

    if s.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        for name, args in calls:
            if name == "mmap" and "PROT_WRITE" in args and "PROT_EXEC" in args:
                problems.append(f"MemoryDenyWriteExecute: mmap({args[:80]}")
            if name in ("mprotect", "pkey_mprotect") and "PROT_EXEC" in args:
                problems.append(f"MemoryDenyWriteExecute: {name}({args[:80]}")

    writable = ["/dev", "/proc/self", "/proc/thread-self"]
    if s.get("ProtectSystem", ["no"])[-1] != "strict":
        writable.append("/")
    if s.get("PrivateTmp", ["no"])[-1] == "yes":
        writable += ["/tmp", "/var/tmp"]
    for d in " ".join(s.get("StateDirectory", [])).split():
        writable.append("/var/lib/" + d)
    for d in " ".join(s.get("ReadWritePaths", [])).split():
        writable.append(d.lstrip("-"))
    hidden_home = s.get("ProtectHome", ["no"])[-1] in ("yes", "tmpfs")
    proc_pid_only = s.get("ProcSubset", ["all"])[-1] == "pid"
    mutating = {"mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "rename", "renameat",
                "renameat2", "link", "linkat", "symlink", "symlinkat", "truncate", "chmod",
                "fchmodat", "mknod", "mknodat"}
    seen = set()
    for name, args in calls:
        if name not in mutating and name not in ("open", "openat", "openat2", "creat",
                                                 "access", "faccessat", "faccessat2",
                                                 "newfstatat", "stat", "statx", "readlink",
                                                 "readlinkat"):
            continue
        m = PATH_ARG.search(args)
        if not m or not m.group(1):
            continue
        path = os.path.normpath(os.path.join(cwd, m.group(1)))
        writes = name in mutating or name == "creat" or (
            name.startswith("open") and re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args))
        key = (name if writes else "read", path)
        if key in seen:
            continue
        seen.add(key)
        if writes and not under(path, writable):
            problems.append(f"ProtectSystem: {name}({path}) writes outside {' '.join(writable)}")
        if hidden_home and under(path, ["/home", "/root", "/run/user"]):
            problems.append(f"ProtectHome: {name}({path})")
        if proc_pid_only and path.startswith("/proc/") and not re.match(
                r"^/proc/(self|thread-self|\d+)(/|$)", path):
            problems.append(f"ProcSubset=pid: {name}({path})")

    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"sandbox: {len(calls)} calls of {len(used)} kinds, all allowed by {unit}: "
          + " ".join(sorted(used)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
