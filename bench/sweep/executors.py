"""Run a sweep's pending configs as submitit jobs: a Slurm job array, or submitit's local executor.

    bench sweep ... --executor slurm --slurm-partition gpu --slurm-gpus-per-task 1
    bench sweep ... --executor submitit-local      # the same job objects, run on this machine

Every job runs `bench.sweep.run.run_config(spec, out_dir)` (what the local executor uses),
which measures one config in a child process and writes its row with `results.append_row`,
so array tasks on many nodes write into one `--out` without losing a row. The jobs belong to the
scheduler: killing `bench sweep` after it has submitted loses nothing, the rows land when the jobs
finish, and running the same command again submits only configs that are missing or failed and
waits for the ones still running or queued (see `bench.sweep.status` for how that is decided).

What lands in OUT/.jobs/: `submit-*.jsonl` (one JSON line per submitted config: config_id,
job_id, executor, log paths), `heartbeat/<config_id>.json` (touched while a job runs), and
`submitit/` (submitit's pickles, logs `<job>_0_log.out|err`, and for Slurm the sbatch script
`<array>_submission.sh`).

submitit (https://github.com/facebookincubator/submitit) is optional: `pip install
'steptime[slurm]'`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

from bench.sweep import status as st
from bench.sweep.job import ident_of, run_job, spec_key, spec_row
from bench.sweep.progress import Progress
from core import UserError, atomic_write

EXECUTORS = ("local", "submitit-local", "slurm")
SLURM_MARGIN_MIN = 10  # Slurm time limit = the per-config timeout + this (start-up, imports)


@dataclass(frozen=True)
class ExecutorOptions:
    executor: str = "local"
    partition: str | None = None
    time_min: int | None = None  # None: from the per-config timeout
    gpus_per_task: int | None = None  # None: the config's processes per node on CUDA, else none
    cpus_per_task: int | None = None  # None: processes per node for CPU configs, else Slurm's
    array_parallelism: int = 256
    setup: tuple[str, ...] = ()
    nodes: int = 1
    detach: bool = False
    poll_s: float | None = None  # None: 1 s for submitit-local, 30 s for Slurm
    progress: bool = True  # a progress bar while waiting (on a terminal only)


_SLURM_FLAGS = (  # (flag, type, default, metavar, help)
    ("--slurm-partition", str, None, "NAME", "Slurm partition"),
    (
        "--slurm-time",
        str,
        None,
        "TIME",
        "time limit per array task, minutes or H:MM:SS "
        f"(default: the per-config timeout + {SLURM_MARGIN_MIN} min)",
    ),
    (
        "--slurm-gpus-per-task",
        int,
        None,
        "N",
        "GPUs per node of each task (default: --nproc-per-config / --slurm-nodes, one per "
        "process, when a config's device is cuda or auto; 0 when every config has --device cpu)",
    ),
    (
        "--slurm-cpus-per-task",
        int,
        None,
        "N",
        "CPUs per task (default: processes per node for CPU configs, else Slurm's default)",
    ),
    ("--slurm-array-parallelism", int, 256, "N", "most array tasks running at once"),
    ("--slurm-nodes", int, 1, "N", "nodes per config (multi-node DDP)"),
)


def add_flags(p) -> None:
    """The executor flags of `bench sweep`."""
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: run here; slurm: one Slurm job array via submitit; submitit-local: the same "
        "jobs through submitit's local executor, all at once (tests the path, not for timings)",
    )
    for flag, typ, default, metavar, text in _SLURM_FLAGS:
        p.add_argument(flag, type=typ, default=default, metavar=metavar, help=text)
    p.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before each task, e.g. 'module load cuda' (repeat for more)",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="with --executor slurm|submitit-local: return after submitting, don't wait",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between looks at the jobs while waiting (default: 30 for slurm, 1 else)",
    )


def options_from_args(a) -> ExecutorOptions:
    for flag in ("slurm_gpus_per_task", "slurm_cpus_per_task"):
        v = getattr(a, flag)
        if v is not None and v < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {v}")
    for flag in ("slurm_array_parallelism", "slurm_nodes"):
        if getattr(a, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(a, flag)}")
    if a.executor != "slurm":
        given = [f for f, _, default, _, _ in _SLURM_FLAGS if getattr(a, _dest(f)) != default]
        given += ["--slurm-setup"] if a.slurm_setup else []
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise UserError(f"{', '.join(given)} {verb} --executor slurm")
    if a.executor == "local" and (a.detach or a.poll_interval is not None):
        raise UserError("--detach and --poll-interval need --executor slurm or submitit-local")
    if a.poll_interval is not None and not (math.isfinite(a.poll_interval) and a.poll_interval > 0):
        raise UserError(f"--poll-interval must be a number of seconds > 0, got {a.poll_interval}")
    nproc = int(getattr(a, "nproc_per_config", 1) or 1)
    if nproc % a.slurm_nodes:
        raise UserError(
            f"--nproc-per-config {nproc} does not split over --slurm-nodes {a.slurm_nodes}: "
            "use a multiple of the node count"
        )
    if a.executor != "local":
        require(a.executor)  # before the sweep touches its folder
    return ExecutorOptions(
        executor=a.executor,
        partition=a.slurm_partition,
        time_min=parse_minutes(a.slurm_time) if a.slurm_time is not None else None,
        gpus_per_task=a.slurm_gpus_per_task,
        cpus_per_task=a.slurm_cpus_per_task,
        array_parallelism=a.slurm_array_parallelism,
        setup=tuple(a.slurm_setup),
        nodes=a.slurm_nodes,
        detach=a.detach,
        poll_s=a.poll_interval,
        progress=not getattr(a, "no_progress", False),
    )


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def parse_minutes(text: str) -> int:
    """'90' (minutes), 'H:MM' or 'H:MM:SS' -> whole minutes (rounded up), at least 1."""
    try:
        parts = [float(x) for x in str(text).strip().split(":")]
        if not 1 <= len(parts) <= 3 or any(not math.isfinite(x) or x < 0 for x in parts):
            raise ValueError(text)
    except ValueError:
        raise UserError(f"--slurm-time must be minutes or H:MM:SS, got {text!r}") from None
    if len(parts) == 1:
        minutes = parts[0]
    else:
        parts += [0.0] * (3 - len(parts))
        minutes = 60 * parts[0] + parts[1] + parts[2] / 60
    return max(1, math.ceil(minutes))


def require(executor: str):
    """The submitit module for `executor`, or a one-line UserError saying what to install."""
    try:
        import submitit
    except ImportError:
        raise UserError(
            f"--executor {executor} needs submitit: pip install 'steptime[slurm]'"
        ) from None
    if executor == "slurm":
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        if missing:
            raise UserError(
                f"--executor slurm needs Slurm's {' and '.join(missing)} on PATH: run on a "
                "cluster login node, or try the path here with --executor submitit-local"
            )
    return submitit


def _resources(specs: list[dict], opts: ExecutorOptions) -> tuple[int, bool]:
    """(processes per node, whether to ask for one GPU per process) for the jobs' request.

    A config with device cuda asks for GPUs. Device auto (the default) means CUDA where there is
    one: on Slurm the nodes are the cluster's GPU nodes, so auto asks for GPUs too (--device cpu
    or --slurm-gpus-per-task 0 says otherwise); submitit-local runs here, so auto asks for GPUs
    only when this machine has one.
    """
    nproc = max(int(s.get("nproc_per_config") or 1) for s in specs)
    if nproc % opts.nodes:
        raise UserError(
            f"--nproc-per-config {nproc} does not split over --slurm-nodes {opts.nodes}: "
            "use a multiple of the node count"
        )
    devices = {str(spec_row(s).get("device", "auto")) for s in specs}
    gpu = any(d.startswith("cuda") for d in devices)
    if "auto" in devices and not gpu:
        gpu = opts.executor == "slurm" or _gpu_here()
    return nproc // opts.nodes, gpu


def _gpu_here() -> bool:
    import torch

    return torch.cuda.is_available()


def make_executor(submitit, out_dir: str, specs: list[dict], opts: ExecutorOptions, timeout_s):
    """A configured submitit executor whose folder is OUT/.jobs/submitit."""
    folder = os.path.join(st.jobs_dir(out_dir), "submitit")
    per_node, cuda = _resources(specs, opts)
    minutes = opts.time_min or math.ceil(timeout_s / 60) + SLURM_MARGIN_MIN
    if opts.executor == "submitit-local":
        if opts.nodes != 1:
            raise UserError("--executor submitit-local runs on one node: drop --slurm-nodes")
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=minutes, gpus_per_node=per_node if cuda else 0)
        return ex
    ex = submitit.SlurmExecutor(folder=folder)
    gpus = opts.gpus_per_task if opts.gpus_per_task is not None else (per_node if cuda else 0)
    cpus = opts.cpus_per_task if opts.cpus_per_task is not None else (None if cuda else per_node)
    params: dict = {
        "job_name": f"steptime-{os.path.basename(os.path.normpath(out_dir))}",
        "time": minutes,
        "nodes": opts.nodes,
        "ntasks_per_node": 1,  # one launcher per node; torchrun starts the processes
        "array_parallelism": opts.array_parallelism,
        # Make this checkout importable on the nodes even when steptime is not installed there.
        "setup": [*opts.setup, f"export PYTHONPATH={_root()}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }
    if opts.partition:
        params["partition"] = opts.partition
    if gpus:
        params["gpus_per_task"] = gpus
    if cpus:
        params["cpus_per_task"] = cpus
    ex.update_parameters(**params)
    return ex


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _detached_signals():
    """Children started inside ignore Ctrl-C and hang-up, so that, like Slurm jobs, submitit-local
    jobs outlive the terminal and the submitting process (a sleeping worker is still killed by
    its per-config timeout)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def submit(specs: list[dict], out_dir: str, opts: ExecutorOptions, timeout_s: float) -> list[str]:
    """Submit one job per spec (one Slurm array); record them in OUT/.jobs/; return job ids."""
    if opts.executor not in ("submitit-local", "slurm"):
        raise UserError(f"submit() runs --executor submitit-local or slurm, not {opts.executor}")
    submitit = require(opts.executor)
    out_dir = os.path.abspath(out_dir)  # jobs may start in another directory
    ex = make_executor(submitit, out_dir, specs, opts, timeout_s)
    try:  # submitit echoes sbatch's stderr on failure: it goes into the one error line instead
        with _detached_signals(), contextlib.redirect_stderr(io.StringIO()):
            jobs = ex.map_array(run_job, specs, [out_dir] * len(specs))
    except Exception as e:  # noqa: BLE001  (sbatch's refusal reaches us as several error types)
        if isinstance(e, UserError):
            raise
        lines = [x.strip().removeprefix("sbatch: error: ") for x in str(e).splitlines()]
        why = "; ".join(x for x in lines if x)[:400] or type(e).__name__
        who = "sbatch" if opts.executor == "slurm" else "submitit"
        raise UserError(f"{who} refused the jobs: {why}") from None
    _record(out_dir, specs, jobs, opts.executor)
    return [str(j.job_id) for j in jobs]


def _record(out_dir: str, specs: list[dict], jobs: list, executor: str) -> str:
    now, host = time.time(), socket.gethostname()
    lines = []
    for spec, job in zip(specs, jobs):
        rec = {
            **ident_of(spec),
            "job_id": str(job.job_id),
            "executor": executor,
            "submitted": now,
            "host": host,
            "submitter_pid": os.getpid(),
            "label": st.label_of(spec_row(spec)),
            "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr),
            "submission_file": str(job.paths.submission_file) if executor == "slurm" else "",
        }
        lines.append(json.dumps(rec) + "\n")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    path = os.path.join(st.jobs_dir(out_dir), f"submit-{stamp}-{host}-{os.getpid()}.jsonl")
    atomic_write(path, "".join(lines))
    return path


# ---------------------------------------------------------------------------------------------
# The submitting side of `bench sweep --executor ...`.


def run_pending(
    specs: list[dict], out_dir: str, opts: ExecutorOptions, timeout_s: float, log=None
) -> list[dict] | None:
    """Submit the pending specs that no live job already covers, then wait for all of them.

    Returns the folder's rows when every pending config has an outcome, or None with --detach.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    require(opts.executor)
    live = st.live_keys(out_dir)
    todo = [s for s in specs if spec_key(s) not in live]
    held = len(specs) - len(todo)
    if held:
        log(f"{held} config(s) already running or queued in {out_dir}: not submitted again")
    if todo:
        ids = submit(todo, out_dir, opts, timeout_s)
        if opts.executor == "slurm" and "_" in ids[0]:
            what = f"Slurm job array {ids[0].split('_')[0]}, tasks 0-{len(ids) - 1}"
        else:
            what = f"{opts.executor} job{'s' if len(ids) > 1 else ''} {', '.join(ids)}"
        log(f"submitted {len(ids)} config(s): {what}; `bench status {out_dir}` shows them")
    elif not held:
        log(f"nothing to submit: every config of this grid has a final row in {out_dir}")
    if opts.detach:
        return None
    wait(out_dir, [spec_key(s) for s in specs], opts, log)
    from bench.sweep import results

    return results.load_rows(out_dir)


def wait(out_dir: str, keys: list[str], opts: ExecutorOptions, log) -> None:
    """Poll the folder until none of `keys` is running or pending; report each as it ends."""
    from bench.sweep import results
    from bench.sweep.rowbuild import summary_line

    poll = opts.poll_s or (30.0 if opts.executor == "slurm" else 1.0)
    remaining = set(keys)
    bar = Progress(len(remaining), opts.progress)
    try:  # Ctrl-C stops the waiting only: the jobs go on, and the same command waits again
        while remaining:
            states = {s.key: s for s in st.config_states(out_dir)}
            rows = {st.key_of(r): r for r in results.load_rows(out_dir)}
            for key in sorted(remaining):
                s = states.get(key)
                if s is None or s.state in st.LIVE:
                    continue
                remaining.discard(key)
                row = rows.get(key)
                if s.from_row and row is not None:
                    bar.done(summary_line(row))
                else:
                    bar.done(f"[{s.state:>7}] {key} {s.label}  ({s.message})")
            if remaining:
                time.sleep(poll)
    finally:
        bar.close()
