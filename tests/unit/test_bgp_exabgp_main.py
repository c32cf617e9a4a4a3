"""bgp/exabgp_main.py's debug-log adaptation, against the installed (pinned) ExaBGP in process."""
from __future__ import annotations

from bgp import exabgp_main


def test_exabgp_debug_calls_are_no_ops_only_while_debug_logging_is_off(monkeypatch):
    """ExaBGP calls log.debug three times per received prefix; with debug off each call is now a
    no-op, and with debug on ExaBGP logs as shipped (fails if its logger's internals change)."""
    from exabgp.environment import getenv
    from exabgp.logger import _log, log
    from exabgp.logger.option import option

    for name in ("init", "debug"):  # restored after the test, as are the logger's options
        monkeypatch.setattr(_log, name, _log.__dict__[name])
    monkeypatch.setattr(log, "debug", _log.__dict__["debug"], raising=False)
    for name in ("logit", "level", "enabled", "logger", "formater"):
        monkeypatch.setattr(option, name, getattr(option, name))
    env = getenv()
    saved = env.log.level, env.log.destination  # ExaBGP's settings object: no monkeypatch undo
    try:
        _check(monkeypatch, env, log, option)
    finally:
        env.log.level, env.log.destination = saved


def _check(monkeypatch, env, log, option) -> None:
    env.log.destination = "stdout"
    exabgp_main._quiet_debug()
    evaluated: list[str] = []

    def message() -> str:
        evaluated.append("x")
        return "x"

    checked: list[str] = []  # ExaBGP's per-call level check, which a no-op never reaches
    shipped_check = option.log_enabled
    monkeypatch.setattr(option, "log_enabled",
                        lambda source, level: checked.append(level) or shipped_check(source, level))
    env.log.level = "INFO"
    log.init(env)
    monkeypatch.setattr(option, "enabled", {**option.enabled, "reactor": True})
    log.debug(message, "reactor")
    log.info(message, "reactor")  # other levels are untouched
    assert (evaluated, checked) == (["x"], ["INFO"])

    env.log.level = "DEBUG"
    log.init(env)
    monkeypatch.setattr(option, "enabled", {**option.enabled, "reactor": True})
    log.debug(message, "reactor")
    assert (evaluated, checked) == (["x", "x"], ["INFO", "DEBUG"])
