"""Who may do what on the socket: roles per peer uid and gid (``--role``, ``--roles-file``).

Three roles, each with what the one before may do. ``detect``: the ops that read (``detect``,
``list``, ``info``, ``health``, ``stats``, ``drift``). ``learn``: also ``detect`` with
``learn: true``, which changes a streaming detector's state for every client. ``admin``:
everything, ``reload`` and any administrative op to come. A peer has a role through its uid or
its gid (the peer's effective gid as ``SO_PEERCRED`` reports it); the higher role wins. The
daemon's own uid is always admin (it owns what is served).

Without any role configured every connected peer may do everything (as before roles). With
roles, a peer without one is refused every op, and one with the detect role is refused the
admin ops: each refusal is a ``forbidden`` error on that request, the connection stays open.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Iterable, Optional

__all__ = ["Roles", "parse_roles", "admin_ids", "ROLES", "DETECT_OPS", "LEARN_OPS"]

DETECT_OPS = frozenset({"detect", "list", "info", "health", "stats", "drift"})
LEARN_OPS = DETECT_OPS | {"learn"}  # "learn": a detect with learn: true
ROLES = ("detect", "learn", "admin")  # lowest first: each may do what the ones before may
_OPS = {"detect": DETECT_OPS, "learn": LEARN_OPS}


class Roles:
    """The configured roles; :meth:`allows` is the one rule."""

    __slots__ = ("uids", "gids", "owner")

    def __init__(self, uids: dict, gids: dict, owner: int):
        self.uids = uids  # uid -> role
        self.gids = gids  # gid -> role
        self.owner = owner

    def role(self, uid, gid) -> Optional[str]:
        """``"admin"``, ``"learn"``, ``"detect"`` or None for a peer (uid or gid None: unknown
        credentials)."""
        if uid is not None and uid == self.owner:
            return "admin"
        got = {self.uids.get(uid), self.gids.get(gid)}
        for role in reversed(ROLES):
            if role in got:
                return role
        return None

    def allows(self, uid, gid, op: str) -> bool:
        role = self.role(uid, gid)
        return role == "admin" or (role is not None and op in _OPS[role])

    def refusal(self, uid, gid, op: str) -> str:
        """The message of the ``forbidden`` error for ``op``."""
        role = self.role(uid, gid)
        need = "detect, learn or admin" if op in DETECT_OPS else "learn or admin" if op in LEARN_OPS else "admin"
        have = f"has the {role} role" if role else "has no role"
        return f"uid {uid} gid {gid} {have} on this daemon; {op!r} needs the {need} role"

    def admins(self) -> "tuple[list, list]":
        """The uids and gids with the admin role (the connections kept for admins are theirs)."""
        uids = sorted({u for u, r in self.uids.items() if r == "admin"} | {self.owner})
        gids = sorted(g for g, r in self.gids.items() if r == "admin")
        return uids, gids

    def detectors(self) -> "tuple[list, list]":
        """The uids and gids that may detect (what the native loop serves without Python)."""
        uids = sorted({u for u, r in self.uids.items()} | {self.owner})
        gids = sorted(self.gids)
        return uids, gids


def _uid(name: str, where: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ValueError(f"{where}: no user named {name!r}") from None


def _gid(name: str, where: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"{where}: no group named {name!r}") from None


def _entries(spec: str, where: str):
    role, sep, who = spec.partition("=")
    role = role.strip()
    if not sep or role not in ROLES:
        raise ValueError(f"{where}: expected ROLE=WHO[,WHO...] with ROLE detect, learn or admin, got {spec!r}")
    names = [w.strip() for w in who.split(",") if w.strip()]
    if not names:
        raise ValueError(f"{where}: {role} names nobody ({spec!r}); give uids, user names, @gids or @group names")
    for w in names:
        if w.startswith("@"):
            yield role, None, _gid(w[1:], where)
        else:
            yield role, _uid(w, where), None


def parse_roles(specs: Optional[Iterable[str]], path: Optional[str] = None, owner: Optional[int] = None) -> Optional[Roles]:
    """The :class:`Roles` of ``--role`` values (``detect=1001,alice,@analysts``) and of a
    roles file (one such line each; ``#`` starts a comment); None when neither gives any.
    Raises ValueError naming the bad entry."""
    lines = [(s, "--role") for s in (specs or ())]
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ValueError(f"--roles-file {path}: {e}") from None
        for i, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append((line.replace(" ", ""), f"{path} line {i}"))
    if not lines:
        return None
    uids, gids = {}, {}
    for spec, where in lines:
        for role, uid, gid in _entries(spec, where):
            table, key = (uids, uid) if uid is not None else (gids, gid)
            if key not in table or ROLES.index(role) > ROLES.index(table[key]):
                table[key] = role  # the higher of two roles given to one peer
    return Roles(uids, gids, os.getuid() if owner is None else owner)


def admin_ids(access: Optional[Roles]) -> "tuple[list, list]":
    """The uids and gids of admins: :meth:`Roles.admins`, and without roles the daemon's own uid
    (every peer may then do everything, but only the daemon's user is known to own it)."""
    return access.admins() if access is not None else ([os.getuid()], [])
