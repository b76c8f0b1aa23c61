"""The command line (`gnlorp`, or `python run.py`): Hydra's composition errors and the runner's user errors,
each as one `error:` line; `--help` with the documented commands."""

from __future__ import annotations

import logging
import os
import sys
import textwrap

from gnlorp.config_groups import group_options
from gnlorp.errors import first_line as _first_line
from gnlorp.methods import METHODS, SPECS

EXIT_USER_ERROR = 2
# the methods named from the registry (gnlorp/methods/__init__.py), never by hand
_METHODS = textwrap.fill("gnlorp (or python run.py): run one experiment (or a sweep) with one of the methods "
                         + ", ".join(f"{SPECS[m].labels.glue} ({m})" for m in METHODS) + ".", width=116)
USAGE = f"""{_METHODS}

Copy one of these (offline, on a CPU, with the shared data beside the checkout):

  # GLUE MRPC, MiniLM, GradNormLoRP rank 8, 3 epochs (~7 min on 2 cores)
  python run.py task=glue/mrpc model=minilm method=gradnormlorp rank=8 task.data_dir=../shared/data/glue_data

  # C4 pre-training of a 20M LLaMA, 200 steps of 8 x 256 tokens, rank 64, fp32 (7-13 min on 2 cores)
  python run.py experiment=c4_llama_20m_cpu method=gradnormlorp

  # four of the methods on one task, as a multirun sweep
  python run.py -m method=full,lora,galore,gradnormlorp rank=8 task=glue/rte task.data_dir=../shared/data/glue_data

  # the paper's setting on a GPU (hub data and models)
  python run.py task=glue/mrpc model=roberta-base method=gradnormlorp rank=8 precision=bf16 train.epochs=30 train.batch_size=16

Every run writes results/<run>-<hash>.json (see README); `resume=true` continues an interrupted run.
`python -m gnlorp.schema` lists every setting with its type, default and accepted values.
"""


def _user_wants_tracebacks() -> bool:
    return os.environ.get("GNLORP_USER_HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR")) == "1"


def composition_error_line(exc: BaseException) -> str:
    """One sentence for an error Hydra or OmegaConf raised while composing the config."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException):  # an unknown group option: name the public ones
        wanted = (getattr(exc, "missing_cfg_file", None) or "").strip("/")
        group = wanted.split("/", 1)[0]
        options = group_options(group) if group else []
        listed = f"; {group}= accepts: {', '.join(options)}" if options else ""
        return f"{group or 'config'} option {wanted.split('/', 1)[-1]!r} does not exist ({wanted}.yaml){listed}."
    from hydra.errors import OverrideParseException

    if isinstance(exc, OverrideParseException):
        return (f"an override could not be parsed ({_first_line(exc)}); quote a value that holds brackets, "
                f"commas, parentheses or spaces, e.g. method.target_modules='\"(q|v)_proj$\"'.")
    cause = exc.__cause__ or exc.__context__
    text = _first_line(exc)
    if cause is not None and _first_line(cause) not in text:
        text = f"{text}: {_first_line(cause)}"
    if "not in struct" in text or "not in '" in text or "Could not override" in text:
        text += "; `python -m gnlorp.schema` lists every setting"
    else:
        text += "; `python -m gnlorp.schema` lists every setting with its type and accepted values"
    return text + "."


def help_text(usage: str) -> str:
    """`python run.py --help`: the documented commands, every public config group option, where the keys are."""
    groups = "\n".join(f"  {g:<10} {', '.join(group_options(g))}" for g in ("model", "task", "method", "precision",
                                                                            "experiment"))
    return (f"{usage.strip()}\n\nConfig groups (group=option):\n{groups}\n\n"
            "Every other setting is key=value (e.g. rank=8 seed=1 train.lr=1e-4 task.data_dir=PATH); "
            "`python -m gnlorp.schema` lists them all with type, default and accepted values.\n"
            "`python run.py --cfg job [overrides]` prints the composed config; `--hydra-help` is Hydra's own help.")


def main_with_one_line_errors(hydra_main, usage: str = "") -> None:
    """Call the @hydra.main function so that a config Hydra cannot compose ends in one line and exit 2.

    Hydra prints composition errors itself (several lines, exit 1) unless HYDRA_FULL_ERROR=1, in which case
    it re-raises them: we set it for Hydra and keep the user's own choice for printing tracebacks."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(help_text(usage))
        return
    os.environ.setdefault("GNLORP_USER_HYDRA_FULL_ERROR", os.environ.get("HYDRA_FULL_ERROR", "0"))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _check_launcher(sys.argv[1:])
        _check_new_keys(sys.argv[1:])
        hydra_main()
    except (HydraException, OmegaConfBaseException) as exc:
        if _JOB_STARTED or _user_wants_tracebacks():
            raise
        print(f"error: {composition_error_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except RuntimeError as exc:  # the submitit launcher, started from a machine without SLURM (a sweep file's launcher)
        if _JOB_STARTED or _user_wants_tracebacks() or 'Could not detect "srun"' not in str(exc):
            raise
        print(f"error: {NO_SLURM}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except _LauncherRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except ValueError as exc:  # Hydra's own check of its flags, e.g. -m with --cfg
        if _JOB_STARTED or _user_wants_tracebacks() or "can be specified" not in str(exc):
            raise
        print(f"error: {_first_line(exc)} (Hydra's flags); drop all but one, e.g. `--cfg job` without -m.",
              file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    end_of_sweep()


NO_SLURM = ("hydra/launcher=slurm submits each point of the sweep as a SLURM job, but this machine has no `srun` "
            "(not a SLURM cluster node); start the sweep from the cluster's login node, or drop hydra/launcher=slurm "
            "to run the points here one after another.")


class _LauncherRefused(Exception):
    pass


def _check_launcher(argv: list[str]) -> None:
    """hydra/launcher=slurm in a multirun needs SLURM's srun on this machine (submitit looks for it only after
    Hydra has composed and set up the sweep, and then raises with a long traceback)."""
    import shutil

    launcher = next((a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("hydra/launcher=")), None)
    if launcher in ("slurm", "submitit_slurm") and any(a in ("-m", "--multirun") for a in argv) \
            and shutil.which("srun") is None:
        raise _LauncherRefused(NO_SLURM)


def _check_new_keys(argv: list[str]) -> None:
    """`+key=value` adds a key the schema does not declare: nothing would check it and the run identity would not
    see it, so two runs that train differently could share a result file. Refused, except for Hydra's own keys and
    config groups (`+experiment=...`); a new setting is declared once in gnlorp/schema.py."""
    groups = ("model", "task", "method", "precision", "logger", "experiment")
    for a in argv:
        if not a.startswith("+") or "=" not in a:
            continue
        key = a.lstrip("+").split("=", 1)[0]
        if key.startswith(("hydra.", "hydra/")) or key in groups or key.split("/", 1)[0] in groups:
            continue
        raise _LauncherRefused(
            f"{a}: `+` adds a key gnlorp does not have, which nothing would check and the run identity would not "
            f"see; set an existing key without `+` (`python -m gnlorp.schema` lists them), or declare the new "
            f"setting in gnlorp/schema.py.")


_JOB_STARTED = False
EXIT_SWEEP_FAILED = 1
_POINTS: list[dict] = []  # this process's multirun points with keep_going=true: num, overrides, status, exit


def _record_point(status: str, code: int) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    _POINTS.append({"num": hc.job.num, "overrides": list(hc.overrides.task), "status": status, "exit": code})


def sweep_summary(points: list[dict]) -> str:
    """One line: how many points ended how, naming each failed one by the overrides that set it apart."""
    values = [dict(o.split("=", 1) if "=" in o else (o, "") for o in p["overrides"]) for p in points]
    varying = sorted({k for v in values for k in v if any(w.get(k) != v[k] for w in values)})
    order = ["complete", "skipped", "incomplete", "failed"]
    statuses = order + sorted({p["status"] for p in points} - set(order))
    counts = {st: n for st in statuses if (n := sum(p["status"] == st for p in points))}
    text = ", ".join(f"{n} {status}" for status, n in counts.items())
    failed = [(p, v) for p, v in zip(points, values) if p["status"] == "failed"]
    line = f"keep_going=true: the sweep's {len(points)} point(s) ended: {text}"
    if failed:
        names = "; ".join(f"#{p['num']}" + (f" {' '.join(f'{k}={v[k]}' for k in varying if k in v)}" if varying else "")
                          + f" (exit {p['exit']})" for p, v in failed)
        line += (f". Failed: {names}; their errors are above. Rerun the same command with skip_complete=true to "
                 "retry only the points that have no complete result")
    return line + "."


def end_of_sweep() -> None:
    """After a multirun with keep_going=true: the summary line, and a non-zero exit when a point failed."""
    if not _POINTS:
        return
    points = list(_POINTS)
    _POINTS.clear()
    print(sweep_summary(points), file=sys.stderr)
    if any(p["status"] == "failed" for p in points):
        sys.exit(EXIT_SWEEP_FAILED)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _check_choices() -> None:
    from hydra.core.hydra_config import HydraConfig

    from gnlorp.checks import check_group_choices

    if HydraConfig.initialized():
        check_group_choices(dict(HydraConfig.get().runtime.choices))


def run_and_exit(cfg) -> None:
    """One job: a user error or a Ctrl-C outside the training loop (which saves and stops on its own) ends
    in one sentence and a non-zero exit. In a multirun with keep_going=true a failed job is reported and the
    sweep goes on to the next one; the sweep ends with a summary line and exit 1 if a point failed
    (end_of_sweep; a rerun with skip_complete=true retries only the failures)."""
    global _JOB_STARTED
    _JOB_STARTED = True
    from gnlorp.errors import UserError
    from gnlorp.runner import run

    keep_going = bool(cfg.get("keep_going")) and _in_multirun()
    status = "failed"
    try:
        _check_choices()
        outcome = run(cfg, echo=logging.getLogger("gnlorp").info, multirun=_in_multirun())
        code, status = outcome.exit_code, outcome.status
    except UserError as exc:
        if _user_wants_tracebacks():
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C) outside training; nothing of this step was saved: rerun the same "
              "command (with resume=true to continue from a checkpoint).", file=sys.stderr)
        code = 130
    except Exception:  # a bug, not the user's input: its traceback, and the sweep goes on with keep_going
        if not keep_going:
            raise
        import traceback

        traceback.print_exc()
        code = EXIT_SWEEP_FAILED
    if keep_going and code != 130:
        _record_point("failed" if code else status, code)
    if code and code != 130 and keep_going:
        print(f"keep_going=true: this job failed (exit {code}); going on with the sweep.", file=sys.stderr)
        return
    if code:
        sys.exit(code)


def main() -> None:
    """The `gnlorp` console script; run.py calls it too."""
    try:
        import hydra

        from gnlorp.schema import register

        register()
    except ImportError as exc:  # the base install: one line naming the extra
        from gnlorp.errors import exit_if_extra_missing

        exit_if_extra_missing(exc)

    @hydra.main(version_base="1.3", config_path="pkg://gnlorp.conf", config_name="config")
    def job(cfg) -> None:
        run_and_exit(cfg)

    main_with_one_line_errors(job, usage=USAGE)
