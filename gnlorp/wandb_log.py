"""A Weights & Biases mirror of a run that never stops training.

results/<run>.json (gnlorp.record) is the source of truth; W&B is a convenience copy. So every
W&B problem degrades instead of raising: no API key -> offline; online init fails -> offline;
offline init fails -> disabled; any later W&B error -> disabled. Each step down is announced by
one line through ``echo``; wandb's own console output is silenced (WANDB_SILENT).
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gnlorp.errors import UserError

ONLINE_INIT_TIMEOUT_S = 30.0
OFFLINE_INIT_TIMEOUT_S = 90.0
_MODES = {
    None: "online",
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
    "off": "disabled",
    "none": "disabled",
}


def _reason(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of message``, short enough for a one-line notice."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _import_wandb():
    # Quiet wandb's own console output unless the user asked otherwise; must happen before
    # wandb's global settings are first loaded (they read the environment once).
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    return wandb


def _netrc_has_key(hosts: list[str]) -> bool:
    """Fallback check: a password for one of ``hosts`` in the netrc file wandb would read."""
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        parsed = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False
    for host in hosts:
        creds = parsed.authenticators(host)
        if creds and creds[2]:
            return True
    return False


def api_key_status() -> tuple[bool, str | None]:
    """Whether wandb has credentials for its server, checked locally (no network call).

    Returns ``(True, None)`` when credentials exist, else ``(False, why)`` with ``why`` a short
    phrase ("no API key found", "the API key is malformed: ...").

    Sources: WANDB_API_KEY / WANDB_IDENTITY_TOKEN_FILE, then the netrc entry for $WANDB_BASE_URL's host or
    api.wandb.ai (``wandb login`` writes it). Only documented places are read: wandb's own lookup is not
    public API.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        # Format problems with an env key surface at init and are reported there.
        return True, None
    hosts = ["api.wandb.ai"]
    base = os.environ.get("WANDB_BASE_URL")
    if base and urlsplit(base).netloc:
        hosts.insert(0, urlsplit(base).netloc)
    try:
        if _netrc_has_key(hosts):  # what `wandb login` writes
            return True, None
    except Exception:  # noqa: BLE001
        pass
    return False, "no API key found"


class WandbLogger:
    """Mirror metrics to W&B. ``mode`` afterwards says what actually happened.

    mode "disabled": wandb is never initialised and nothing is written.
    mode "offline": the run is written to ``<dir>/wandb/offline-run-*`` (``wandb sync`` later).
    mode "online": online if credentials exist and init succeeds within ``online_init_timeout``
    seconds (default: $WANDB_INIT_TIMEOUT, wandb's own variable, else 30), otherwise offline (then disabled)
    with one notice line each.
    mode None: the WANDB_MODE environment variable if set, else "online".
    ``run_id``: the W&B id of a fresh run (session.wandb_run_id); ``resume_id``: the id a resumed run's checkpoint
    holds, whose W&B run it continues; ``group``, ``tags`` and ``job_type`` let a sweep's runs be grouped and filtered.
    """

    def __init__(
        self,
        mode: str | None,
        project: str,
        run_name: str,
        config: dict,
        dir: str | Path,
        *,
        resume_id: str | None = None,
        entity: str | None = None,
        echo: Callable[[str], Any] = print,
        online_init_timeout: float | None = None,
        run_id: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
    ):
        if online_init_timeout is None:
            try:
                online_init_timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or ONLINE_INIT_TIMEOUT_S)
            except ValueError:
                online_init_timeout = ONLINE_INIT_TIMEOUT_S
        if "WANDB_MODE" in os.environ and not os.environ["WANDB_MODE"].strip():
            del os.environ["WANDB_MODE"]  # wandb.Settings rejects an empty mode
        if mode is None and os.environ.get("WANDB_MODE"):
            mode = os.environ["WANDB_MODE"]  # unset in the config: wandb's own variable decides
        key = mode.strip().lower() if isinstance(mode, str) else mode
        if mode is False:
            key = "disabled"
        if key not in _MODES:
            raise UserError(
                f"wandb mode {mode!r} is not one of online, offline, disabled; "
                "set logger.mode to one of those."
            )
        requested = _MODES[key]
        self._echo = echo
        self._failed = False
        self.mode: str = "disabled"
        self.run_id: str | None = None
        self.run = None
        self.dir = Path(dir)
        self.project = project
        self.run_name = run_name
        if requested == "disabled":
            return

        try:
            wandb = _import_wandb()
        except Exception as e:  # noqa: BLE001
            self._notice(f"W&B: cannot import wandb ({_reason(e)}); W&B logging disabled.")
            return

        from gnlorp.record import to_jsonable

        init_kwargs = dict(
            project=project,
            name=run_name,
            config=to_jsonable(config or {}),
            entity=entity,
            dir=str(self.dir),
            reinit="finish_previous",
        )
        if group:
            init_kwargs["group"] = group
        if tags:
            init_kwargs["tags"] = list(tags)
        if job_type:
            init_kwargs["job_type"] = job_type
        if resume_id or run_id:  # a resume's id (from its checkpoint): W&B continues that run
            init_kwargs.update(id=resume_id or run_id, resume="allow")
        offline_where = f"logging offline to {self.dir / 'wandb'} — sync later with 'wandb sync'."

        attempted_online = False
        if requested == "online":
            has_key, why = api_key_status()
            if not has_key:
                self._notice(
                    f"W&B: {why} (set WANDB_API_KEY or run 'wandb login'); {offline_where}"
                )
            else:
                attempted_online = True
                try:
                    self._init(wandb, "online", init_kwargs, online_init_timeout)
                    return
                except Exception as e:  # noqa: BLE001 - unreachable server, bad key, timeout
                    self._notice(f"W&B: online init failed ({_reason(e)}); {offline_where}")
        if attempted_online and not resume_id:
            # a failed online init keeps its run id busy in wandb's service: the offline copy takes a new one
            init_kwargs.pop("id", None)
            init_kwargs.pop("resume", None)
        try:
            self._init(wandb, "offline", init_kwargs, OFFLINE_INIT_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001
            self.run, self.run_id, self.mode = None, None, "disabled"
            self._notice(
                f"W&B: offline init failed ({_reason(e)}); W&B logging disabled for this run."
            )

    def _init(self, wandb, mode: str, init_kwargs: dict, timeout: float) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            init_timeout=float(timeout),
            silent=True,
            console="off",  # keep stdout/stderr unwrapped; the run's own logs live elsewhere
        )
        run = wandb.init(mode=mode, settings=settings, **init_kwargs)
        if run is None or getattr(run, "disabled", False):
            raise RuntimeError(f"wandb.init(mode={mode!r}) returned a disabled run")
        self.run = run
        self.run_id = run.id
        self.mode = mode

    def _notice(self, line: str) -> None:
        try:
            self._echo(line)
        except Exception:  # noqa: BLE001 - a broken echo must not break training either
            pass

    def _fail(self, what: str, exc: BaseException) -> None:
        """Report the first W&B error once and stop talking to W&B."""
        self.run = None
        self.mode = "disabled"
        if not self._failed:
            self._failed = True
            self._notice(
                f"W&B: {what} failed ({_reason(exc)}); W&B logging disabled for the rest of "
                "this run (training continues)."
            )

    def log(self, metrics: dict, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(dict(metrics), step=int(step))
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def summary(self, metrics: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(dict(metrics))
        except Exception as e:  # noqa: BLE001
            self._fail("summary", e)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (idempotent). ``mode`` keeps saying how the run was logged."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=int(exit_code))
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)
