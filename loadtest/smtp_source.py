#!/usr/bin/env python3
"""One relay run driven by Postfix's own tools: smtp-source injects into an MTA, which relays to
smtp-sink; reports injection and end-to-end msg/s and the MTA's CPU per message as one JSON line.

Neither tool was written here, so the figures cannot flatter sluice: smtp-source opens one
connection per message (no pipelining) and smtp-sink answers as Postfix's test server does.
Everything is on 127.0.0.1, bounded in messages and seconds.

usage: smtp_source.py LABEL MTA_ADDR MTA_PID SINK_PORT MESSAGES SESSIONS SIZE
"""

import json
import os
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")
MAX_SECONDS = 300


def tree(root):
    """The pid and every live descendant."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(root):
    """CPU of the live tree, plus what reaped children left in each parent's cutime/cstime."""
    total = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except OSError:
            pass
    return total / TICKS


def main():
    label, mta, pid, sink_port, n, sessions, size = sys.argv[1:8]
    pid, n = int(pid), int(n)
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", "-M", str(n), f"127.0.0.1:{sink_port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.3)
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    src = subprocess.run(
        ["smtp-source", "-s", sessions, "-m", str(n), "-l", size,
         "-f", "loadtest@example.com", "-t", "sink@example.org", mta],
        capture_output=True, text=True, timeout=MAX_SECONDS,
    )
    injected = time.monotonic() - t0
    try:
        sink.wait(timeout=MAX_SECONDS)
        done = True
    except subprocess.TimeoutExpired:
        sink.kill()
        done = False
    total = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    print(json.dumps({
        "label": label,
        "injector": "smtp-source",
        "messages": n,
        "sessions": int(sessions),
        "message_size": int(size),
        "smtp_source_exit": src.returncode,
        "smtp_source_errors": src.stderr.strip().splitlines()[-3:],
        "all_delivered": done,
        "injected_per_second": round(n / injected, 1),
        "end_to_end_messages_per_second": round(n / total, 1) if done else 0,
        "mta_cpu_ms_per_message": round(cpu * 1000 / n, 3),
    }))


if __name__ == "__main__":
    main()
