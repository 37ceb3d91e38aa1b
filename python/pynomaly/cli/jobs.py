"""Background jobs: ``pynomaly jobs`` (list, show, cancel, watch) and ``pynomaly worker``."""

from __future__ import annotations

import json
import sys

from pynomaly.cli._common import table


def add_jobs(sub):
    jb = sub.add_parser("jobs", help="background jobs: list, show, cancel, watch")
    jsub = jb.add_subparsers(dest="jobs_command", required=True, metavar="ACTION", help="what to do")
    jl = jsub.add_parser("list", help="the latest jobs, newest first")
    jl.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"],
                    help="only jobs in this state")
    jl.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    jl.add_argument("--json", action="store_true", help="print the jobs as JSON")
    for verb, text in (("show", "one job in full"), ("cancel", "cancel a queued or running job"),
                       ("watch", "follow a job's progress until it finishes")):
        x = jsub.add_parser(verb, help=text)
        x.add_argument("job", help="job id (or a unique prefix of at least 4 characters)")
        if verb != "cancel":
            x.add_argument("--json", action="store_true", help="print JSON (watch: one object per change)")


def add_worker(sub):
    wk = sub.add_parser("worker", help="run queued jobs and deliver alerts until SIGTERM",
                        description="Run queued jobs of the home one at a time and deliver its alert outbox, until "
                        "SIGTERM or Ctrl-C; a job running then is interrupted and re-queued. Several workers may "
                        "share a home: each job runs in exactly one.")
    wk.add_argument("--no-alerts", action="store_true", help="do not deliver alerts from this worker")
    wk.add_argument("--poll", type=float, default=0.5, help="seconds between looks at an empty queue (default 0.5)")
    wk.add_argument("--max-jobs", type=int, help="exit after running this many jobs")


def _job_line(j) -> tuple:
    frac = f"{100 * j['fraction']:.0f}%" if j["fraction"] is not None else "-"
    what = j["params"].get("detector", "")
    return (j["id"][:8], j["kind"], what, j["state"], j["stage"] or "-", frac, (j["created_at"] or "")[:19],
            (j["error"] or "")[:60])


def _cmd_jobs(args, home, progress, out):
    from pynomaly.service import jobs

    if args.jobs_command == "list":
        js = jobs.list_jobs(home, args.state, args.limit)
        if args.json:
            out.write(json.dumps(js, indent=2) + "\n")
        elif not js:
            out.write("no jobs\n")
        else:
            out.write(table([_job_line(j) for j in js],
                             ("ID", "KIND", "DETECTOR", "STATE", "STAGE", "DONE", "CREATED (UTC)", "ERROR")) + "\n")
    elif args.jobs_command == "show":
        j = jobs.get(home, args.job)
        if args.json:
            out.write(json.dumps(j, indent=2) + "\n")
        else:
            for k, v in j.items():
                out.write(f"{k:17} {json.dumps(v) if isinstance(v, (dict, list)) else v}\n")
    elif args.jobs_command == "cancel":
        j = jobs.cancel(home, args.job)
        out.write(f"job {j['id']} " + ("cancelled\n" if j["state"] == "cancelled" else "asked to stop\n"))
    else:  # watch
        last = None
        for j in jobs.watch(home, args.job):
            last = j
            if args.json:
                out.write(json.dumps(j) + "\n")
            else:
                frac = f" {100 * j['fraction']:.0f}%" if j["fraction"] is not None else ""
                out.write(f"{j['state']}" + (f": {j['stage']}{frac}" if j["stage"] else "") + "\n")
            out.flush()
        if last is not None and not args.json:
            if last["error"]:
                out.write(f"error: {last['error']}\n")
            if last["result"]:
                out.write(f"result: {json.dumps(last['result'])}\n")
        if last is not None and last["state"] != "succeeded":
            raise SystemExit(1)


def _cmd_worker(args, home, progress, out):
    import signal

    from pynomaly.service import alerts, jobs

    worker = jobs.Worker(home, poll=args.poll, signals=True)
    dispatcher = None if args.no_alerts else alerts.Dispatcher(worker.home).start()

    def on_signal(signum, frame):
        worker.shutdown()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    sys.stderr.write(f"pynomaly worker {worker.id}: serving {worker.home}\n")
    sys.stderr.flush()
    try:
        n = worker.run(max_jobs=args.max_jobs)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if dispatcher is not None:
            dispatcher.stop()
    sys.stderr.write(f"pynomaly worker {worker.id}: stopped after {n} job(s)\n")


COMMANDS = {"jobs": _cmd_jobs, "worker": _cmd_worker}
