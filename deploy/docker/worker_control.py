"""Worker pod hooks: `drain` (preStop) and `ping` (liveness), talking to this pod's Celery nodes only.

drain: Kubernetes (or KEDA's HPA) picks which pod to remove and it may be mid-chunk
(service-conventions §4.3, pitfall 2). Before the kubelet sends SIGTERM, `drain` (1) finds the Celery
nodes running in this pod (node names end in `@<pod hostname>`), (2) sends them `cancel_consumer
<queue>` so they take no new message, and (3) polls `inspect active` until they run nothing or
`--wait-s` has passed. SIGTERM then finds an idle worker; a chunk that outlives the wait is handled by
Celery's soft shutdown and, being late-acked, goes back to the queue. It exits 0 in every case: a failed
hook must not block the stop. ping: exits 0 when a node of this pod answers (prefork keeps the main
process answering while a child runs a chunk).

    python /opt/timemark/worker_control.py drain --queue gpu --wait-s 780
    python /opt/timemark/worker_control.py ping
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any


def local_nodes(app: Any, hostname: str, *, timeout_s: float) -> list[str]:
    """Celery node names (e.g. `gpu@pod-abc`) that answer a ping and run on `hostname`."""
    replies = app.control.ping(timeout=timeout_s) or []
    names = [name for reply in replies for name in reply]
    return sorted(name for name in names if name.partition("@")[2] == hostname)


def running_tasks(app: Any, nodes: list[str], *, timeout_s: float) -> int:
    """How many tasks `nodes` are executing now (0 when they do not answer: nothing to wait for)."""
    active = app.control.inspect(destination=nodes, timeout=timeout_s).active() or {}
    return sum(len(tasks or []) for tasks in active.values())


def drain(
    app: Any,
    queue: str,
    *,
    hostname: str,
    wait_s: float,
    poll_s: float = 5.0,
    reply_timeout_s: float = 2.0,
    log: Any = print,
) -> bool:
    """Cancel `queue` on this host's nodes and wait for their running tasks; True when they went idle."""
    nodes = local_nodes(app, hostname, timeout_s=reply_timeout_s)
    if not nodes:
        log(f"drain: no Celery node answered on {hostname}; nothing to drain")
        return True
    app.control.cancel_consumer(queue, destination=nodes, reply=True, timeout=reply_timeout_s)
    log(f"drain: {nodes} stopped consuming {queue!r}")
    deadline = time.monotonic() + wait_s
    while True:
        busy = running_tasks(app, nodes, timeout_s=reply_timeout_s)
        if busy == 0:
            log("drain: idle, ready for SIGTERM")
            return True
        if time.monotonic() >= deadline:
            log(f"drain: {busy} task(s) still running after {wait_s:.0f} s; soft shutdown takes over")
            return False
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Drain or ping this pod's Celery worker.")
    commands = parser.add_subparsers(dest="command", required=True)
    drain_cmd = commands.add_parser("drain", help="stop consuming a queue, wait for the running task")
    drain_cmd.add_argument("--queue", required=True, help="queue to stop consuming, e.g. gpu")
    drain_cmd.add_argument("--wait-s", type=float, default=780.0, help="longest wait for the running task")
    drain_cmd.add_argument("--poll-s", type=float, default=5.0)
    ping_cmd = commands.add_parser("ping", help="exit 0 when a Celery node of this host answers")
    ping_cmd.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args(argv)

    from core.queue import celery_app  # the app's own broker settings (TIMEMARK_BROKER_URL)

    hostname = socket.gethostname()
    if args.command == "ping":
        nodes = local_nodes(celery_app(), hostname, timeout_s=args.timeout_s)
        print(f"ping: {nodes or 'no node answered'} on {hostname}")
        return 0 if nodes else 1
    try:
        drain(celery_app(), args.queue, hostname=hostname, wait_s=args.wait_s, poll_s=args.poll_s)
    except Exception as err:  # a hook that fails still lets the pod stop; say why in the pod events
        print(f"drain: failed ({type(err).__name__}: {err}); stopping without a drain", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
