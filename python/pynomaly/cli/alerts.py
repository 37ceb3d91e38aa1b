"""Alert rules and the outbox: ``pynomaly alerts`` (add, list, remove, approve, outbox, deliver)."""

from __future__ import annotations

import json

from pynomaly.cli._common import table


def add_alerts(sub):
    al = sub.add_parser("alerts", help="alert rules on detections: add, list, remove; the outbox")
    asub = al.add_subparsers(dest="alerts_command", required=True, metavar="ACTION", help="what to do")
    aa = asub.add_parser("add", help="add a rule: when a detection of DETECTOR matches, send an alert",
                         description="Add an alert rule. All conditions given must hold; with none, any anomaly "
                         "fires. Alerts are queued in the outbox and sent by `pynomaly worker`, the daemon, or "
                         "`pynomaly alerts deliver`.")
    aa.add_argument("--detector", required=True, help="detector name (it need not exist yet)")
    ch = aa.add_mutually_exclusive_group(required=True)
    ch.add_argument("--webhook", metavar="URL", help="POST an Alertmanager v4 message, signed (Standard Webhooks)")
    ch.add_argument("--command", dest="run_command", metavar="CMD", help="run CMD with the message as JSON on stdin")
    ch.add_argument("--log", metavar="FILE", help="append the message as a JSON line to FILE")
    ch.add_argument("--channel", metavar="NAME", help="a channel of your own: entry point name or module:Class "
                    "(with --to)")
    aa.add_argument("--to", metavar="TARGET", help="the target given to a --channel of your own")
    aa.add_argument("--score-above", type=float, metavar="S", help="an anomaly scored above S")
    aa.add_argument("--rate-above", type=float, metavar="R", help="a detection's anomaly rate above R (0..1)")
    aa.add_argument("--count", type=int, metavar="N", help="N anomalies or more ... (with --within)")
    aa.add_argument("--within", type=float, metavar="MINUTES", help="... within this many minutes")
    aa.add_argument("--drift-above", type=float, metavar="PSI", help="a rule on drift: a feature's PSI in the "
                    "detector's live drift window (the last hour) at or above PSI (0.2: a significant shift)")
    aa.add_argument("--score-drift-above", type=float, metavar="PSI", help="a rule on drift: the score "
                    "distribution's PSI at or above PSI")
    aa.add_argument("--dedup", type=float, default=5.0, metavar="MINUTES",
                    help="send the same alert at most once per this many minutes (default 5; 0: always)")
    aa.add_argument("--secret", help="webhook signing secret (whsec_...); default: a new one, printed")
    aa.add_argument("--timeout", type=float, default=10.0, help="seconds per delivery attempt (default 10)")
    aa.add_argument("--max-attempts", type=int, default=8, help="attempts before a message is dead (default 8)")
    aa.add_argument("--json", action="store_true", help="print the rule as JSON")
    alst = asub.add_parser("list", help="the alert rules")
    alst.add_argument("--detector", help="only this detector's rules")
    alst.add_argument("--json", action="store_true", help="print the rules as JSON")
    ar = asub.add_parser("remove", help="remove a rule (its queued messages are still sent)")
    ar.add_argument("rule", help="rule id")
    ap = asub.add_parser("approve", help="sign a rule with this installation's key, so its alerts are sent",
                         description="Sign an existing rule (as it stands now) with this installation's key. Rules "
                         "are signed when added; a rule made before rules were signed, or changed in the database "
                         "since, is not approved and its alerts are dead-lettered. Check its channel and target "
                         "first (pynomaly alerts list): approving vouches for what it runs or where it sends.")
    ap.add_argument("rule", help="rule id")
    ao = asub.add_parser("outbox", help="queued, sent and dead alert messages")
    ao.add_argument("--state", choices=["pending", "sending", "sent", "dead"], help="only messages in this state")
    ao.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default 50)")
    ao.add_argument("--json", action="store_true", help="print the messages as JSON")
    asub.add_parser("deliver", help="send the due messages of the outbox once, now")


def _cmd_alerts(args, home, progress, out):
    from pynomaly.service import alerts

    c = args.alerts_command
    if c == "add":
        for name, target in (("webhook", args.webhook), ("command", args.run_command), ("log", args.log),
                             (args.channel, args.to)):
            if name and (target is not None or name == args.channel):
                break
        if args.channel and not args.to:
            raise ValueError("--channel needs --to TARGET")
        rule = alerts.add_rule(
            home, args.detector, name, target, score_above=args.score_above, rate_above=args.rate_above,
            count=args.count, within=None if args.within is None else 60.0 * args.within,
            dedup=60.0 * args.dedup, secret=args.secret, timeout=args.timeout, max_attempts=args.max_attempts,
            drift_above=args.drift_above, score_drift_above=args.score_drift_above,
        )
        if args.json:
            out.write(json.dumps(rule, indent=2) + "\n")
        else:
            out.write(f"rule {rule['id']} added for {rule['detector']} ({rule['channel']} {rule['target']})\n")
            if rule["secret"] and not args.secret:
                out.write(f"webhook secret (receivers verify signatures with it): {rule['secret']}\n")
    elif c == "list":
        rules = alerts.list_rules(home, args.detector)
        if args.json:
            out.write(json.dumps(rules, indent=2) + "\n")
        elif not rules:
            out.write("no alert rules; add one with: pynomaly alerts add --detector NAME --webhook URL\n")
        else:
            def when(r):
                parts = []
                if r["score_above"] is not None:
                    parts.append(f"score>{r['score_above']:g}")
                if r["rate_above"] is not None:
                    parts.append(f"rate>{r['rate_above']:g}")
                if r["count"] is not None:
                    parts.append(f"{r['count']} in {r['within'] / 60:g}min")
                drift = []
                if r["drift_above"] is not None:
                    drift.append(f"feature PSI>={r['drift_above']:g}")
                if r["score_drift_above"] is not None:
                    drift.append(f"score PSI>={r['score_drift_above']:g}")
                return " and ".join(parts) or " or ".join(drift) or "any anomaly"

            out.write(table([(r["id"], r["detector"], r["channel"], r["target"], when(r),
                               "yes" if r["approved"] else "NO: pynomaly alerts approve " + r["id"]) for r in rules],
                             ("ID", "DETECTOR", "CHANNEL", "TARGET", "WHEN", "APPROVED")) + "\n")
    elif c == "remove":
        r = alerts.remove_rule(home, args.rule)
        out.write(f"removed rule {r['id']} ({r['detector']}, {r['channel']})\n")
    elif c == "approve":
        r = alerts.approve_rule(home, args.rule)
        out.write(f"approved rule {r['id']} ({r['detector']}: {r['channel']} {r['target']})\n")
    elif c == "outbox":
        msgs = alerts.outbox(home, args.state, args.limit)
        if args.json:
            out.write(json.dumps(msgs, indent=2) + "\n")
        elif not msgs:
            out.write("the outbox is empty\n")
        else:
            out.write(table([(m["id"], m["rule_id"], m["channel"], m["state"], m["attempts"], (m["created_at"] or "")[:19],
                               (m["last_error"] or "")[:60]) for m in msgs],
                             ("ID", "RULE", "CHANNEL", "STATE", "ATTEMPTS", "CREATED (UTC)", "LAST ERROR")) + "\n")
    else:  # deliver
        done = alerts.deliver(home)
        out.write(f"sent {done['sent']}, to retry {done['retry']}, dead {done['dead']}\n")


COMMANDS = {"alerts": _cmd_alerts}
