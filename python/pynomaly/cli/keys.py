"""Commands on the home itself: init, keys (rotate, reencrypt), audit, doctor."""

from __future__ import annotations

import json

from pynomaly.cli._common import table


def add_init(sub):
    n = sub.add_parser("init", help="create the home folder; --encrypt makes it an encrypted one")
    n.add_argument("--encrypt", action="store_true",
                   help="seal models, results and sensitive fields with a data key wrapped by the key-encryption key "
                        "(--key-file PATH, created if absent; --key-command CMD; or $PYNOMALY_KEY)")


def add_keys(sub):
    k = sub.add_parser("keys", help="key rotation of an encrypted home")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION",
                            help="rotate: a new key-encryption key; reencrypt: a new data key")
    kr = ksub.add_parser("rotate", help="wrap the data key with a new key-encryption key (no data is rewritten)",
                         description="Wrap the data key with a new key-encryption key; no data is rewritten. "
                                     "Needs the current key (--key-file, --key-command or $PYNOMALY_KEY) and the new one.")
    kr.add_argument("--new-key-file", metavar="PATH", help="the new key's file (created, mode 0600, if absent)")
    kr.add_argument("--new-key-command", metavar="CMD", help="a command printing the new key")
    ksub.add_parser("reencrypt", help="seal everything under a new data key (resumable: rerun after a crash)",
                    description="Seal every artifact and field under a new data key, then forget the old one. "
                                "Resumable: after a crash, run it again.")


def add_audit(sub):
    au = sub.add_parser("audit", help="show the audit trail, or check its hash chain (audit verify)",
                        description="Show the audit trail (who did what, when, from where, outcome); "
                                    "`pynomaly audit verify` checks its hash chain and exits 1 on a break.")
    au.add_argument("action", nargs="?", choices=["verify"], help="verify: check the chain")
    au.add_argument("--since", help="entries at or after an ISO date/time (2026-11-30T12:00) or an age (30m, 12h, 7d)")
    au.add_argument("--json", action="store_true", help="print as JSON")


def add_doctor(sub):
    dr = sub.add_parser("doctor", help="check the home folder: database, artifacts, version numbers")
    dr.add_argument("--repair", action="store_true",
                    help="fix what can be fixed without losing anything (orphans go to lost+found/)")
    dr.add_argument("--json", action="store_true", help="print the findings as JSON")


def _cmd_init(args, home, progress, out):
    from pathlib import Path

    from pynomaly import service
    from pynomaly.store._home import redacted

    key = None
    if args.encrypt:
        if args.key_file and not Path(args.key_file).expanduser().exists():
            service.create_key_file(args.key_file)
            out.write(f"wrote a new key-encryption key to {args.key_file} (mode 0600); keep it (and a copy) "
                      "outside the home: without it the home cannot be read\n")
        key = service.key_source(args.key_file, args.key_command)
    path = service.init_home(home, encrypt=args.encrypt, key=key)
    out.write(f"{'encrypted ' if args.encrypt else ''}home ready at {redacted(str(path))}\n")


def _cmd_keys(args, home, progress, out):
    from pathlib import Path

    from pynomaly import service

    if args.keys_command == "rotate":
        if args.new_key_file and not Path(args.new_key_file).expanduser().exists():
            service.create_key_file(args.new_key_file)
            out.write(f"wrote a new key-encryption key to {args.new_key_file} (mode 0600)\n")
        new = service.key_source(args.new_key_file, args.new_key_command, prefix="PYNOMALY_NEW_")
        if new is None:
            raise SystemExit("pynomaly: keys rotate needs the new key: --new-key-file PATH (created if absent), "
                             "--new-key-command CMD, or $PYNOMALY_NEW_KEY")
        ids = service.rotate_key(home, new)
        out.write(f"data key(s) {', '.join(ids)} now wrapped by {new.describe()}; the old key no longer opens "
                  "this home\n")
    else:
        done = service.reencrypt(home, progress=progress)
        progress.close()
        out.write(f"re-encrypted {done['files']} file(s) and {done['fields']} field(s) under data key {done['key']}; "
                  f"retired {', '.join(done['retired']) or 'nothing'}\n")


def _cmd_audit(args, home, progress, out):
    from pynomaly import service

    if args.action == "verify":
        found = service.audit_verify(home)
        if args.json:
            out.write(json.dumps(found, indent=2) + "\n")
        elif found["ok"]:
            out.write(f"audit trail intact: {found['entries']} entries\n")
        else:
            for p in found["problems"]:
                out.write(f"BROKEN: {p}\n")
        if not found["ok"]:
            raise SystemExit(1)
        return
    entries = service.audit_entries(home, since=args.since)
    if args.json:
        out.write(json.dumps(entries, indent=2) + "\n")
        return
    rows = [(e["seq"], e["at"][:19], e["actor"], e["action"], e["target"] or "-", e["origin"] or "-", e["outcome"])
            for e in entries]
    if rows:
        out.write(table(rows, ("SEQ", "WHEN (UTC)", "WHO", "WHAT", "TARGET", "FROM", "OUTCOME")) + "\n")
    else:
        out.write("no audit entries" + (f" since {args.since}" if args.since else "") + "\n")


def _cmd_doctor(args, home, progress, out):
    from pynomaly import service

    found = service.doctor(home, repair=args.repair)
    if args.json:
        out.write(json.dumps(found, indent=2) + "\n")
    else:
        problems = {k: v for k, v in found.items() if v and k != "repaired"}
        for key, items in problems.items():
            out.write(f"{key.replace('_', ' ')}: {len(items)}\n")
            for item in items[:20]:
                out.write(f"  {item}\n")
        for action in found["repaired"]:
            out.write(f"repaired: {action}\n")
        if not problems:
            out.write("no problems found\n")
    serious = ("database", "missing_artifacts", "damaged_artifacts", "unloadable_versions", "lost_versions",
               "version_marks")
    if any(found[k] for k in serious):
        raise SystemExit(1)


COMMANDS = {"init": _cmd_init, "keys": _cmd_keys, "audit": _cmd_audit, "doctor": _cmd_doctor}
