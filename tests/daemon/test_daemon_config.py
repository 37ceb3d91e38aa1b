"""The daemon's settings are declared once (pynomaly_daemon.config.Config): the command line is
derived from the fields, so each field has a flag, defaults agree and units convert."""

from __future__ import annotations

import dataclasses

import pytest

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")
from pynomaly_daemon.config import Config, build_parser, config_from_args  # noqa: E402


def test_every_field_has_a_flag_and_the_defaults_agree():
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(Config)} <= dests
    parsed = config_from_args(parser.parse_args([]))
    assert dataclasses.replace(parsed, socket_path="") == Config()


def test_units_and_switches_convert():
    c = config_from_args(build_parser().parse_args(
        ["--socket", "rel.sock", "--max-frame-mb", "2", "--coalesce-window-ms", "5", "--cache-mb", "0.5",
         "--no-fast-path", "--trust-pickle", "--allow-uid", "3", "--allow-uid", "4", "--workers", "7"]))
    assert c.max_frame == 2 * 2**20 and isinstance(c.max_frame, int)
    assert c.coalesce_window == 0.005 and c.cache_bytes == 2**19
    assert c.fast_path is False and c.trust_pickle is True and c.allowed_uids == frozenset({3, 4})
    assert c.workers == 7 and c.socket_path.endswith("/rel.sock") and c.socket_path.startswith("/")


def test_bad_values_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--max-connections", "many"])
    assert "invalid int value" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--max-frame-mb", "-1"], ["--frame-timeout", "0"], ["--workers", "0"],
                                  ["--net-threads", "-2"], ["--idle-timeout", "nan"], ["--cache-mb", "inf"],
                                  ["--learner-lease-seconds", "0"]])
def test_numbers_out_of_range_are_refused_before_the_daemon_starts(argv):
    with pytest.raises(SystemExit, match=f"{argv[0]} must be a finite number"):
        config_from_args(build_parser().parse_args(argv))


def test_a_learner_lease_of_a_day_or_more_is_refused():
    with pytest.raises(SystemExit, match="--learner-lease-seconds must be less than 86400"):
        config_from_args(build_parser().parse_args(["--learner-lease-seconds", "86400"]))


def test_zero_where_zero_means_something():
    c = config_from_args(build_parser().parse_args(["--coalesce-window-ms", "0", "--drain-timeout", "0",
                                                     "--idle-inline-rows", "0"]))
    assert c.coalesce_window == 0 and c.drain_timeout == 0 and c.idle_inline_rows == 0
