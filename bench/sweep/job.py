"""The body of one sweep job, run by submitit on a compute node or in a submitit-local process.

`run_job(spec, out_dir)` measures one config with `bench.sweep.run.run_config` (what local
sweeps use) while a heartbeat file says the job is alive; `status` reads that file to tell
running jobs from dead ones. This module is imported on the nodes, so it keeps its imports light.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass

from bench.sweep import status as st


def spec_key(spec: dict) -> str:
    """The folder key (config_id and repeat) of a spec, see `bench.sweep.status.key_of`."""
    return st.key_of(ident_of(spec))


def ident_of(spec: dict) -> dict:
    row = spec_row(spec)
    cid = spec.get("config_id") or row.get("config_id")
    if not cid:
        from bench.sweep.grid import config_id

        cid = config_id(row)
    return {"config_id": cid, "repeat": int(spec.get("repeat", row.get("repeat")) or 0)}


def spec_row(spec: dict) -> dict:
    return spec.get("row", spec)


class _Heartbeat:
    """OUT/.jobs/heartbeat/<config_id>.json, touched every HEARTBEAT_S s while the job runs and
    marked ended on the way out; a SIGKILLed job leaves it stale, which `bench status` reads as
    failed after STALE_S."""

    def __init__(self, out_dir: str, ident: dict, job_id: str) -> None:
        self.out_dir, self.job_id = out_dir, job_id
        self.cid, self.repeat = ident["config_id"], ident["repeat"]
        self.status = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.path = st.write_heartbeat(
            self.out_dir, self.cid, self.repeat, self.job_id, started=time.time()
        )
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(st.HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        st.write_heartbeat(
            self.out_dir, self.cid, self.repeat, self.job_id, ended=time.time(), status=self.status
        )


@dataclass
class _Env:
    job_id: str
    num_nodes: int = 1
    node: int = 0
    hostnames: tuple[str, ...] = ()


def _job_env() -> _Env:
    try:
        import submitit

        env = submitit.JobEnvironment()
        return _Env(str(env.job_id), env.num_nodes, env.node, tuple(env.hostnames))
    except (ImportError, RuntimeError):  # called directly, outside a submitit job
        return _Env(f"pid{os.getpid()}")


def run_job(spec: dict, out_dir: str) -> dict:
    """The body of one job: run one config with `bench.sweep.run.run_config` under a heartbeat.

    In a multi-node job every node calls run_config with its node rank (torchrun's rendezvous
    joins them); node 0 writes the row and the heartbeat.
    """
    from bench.sweep.run import run_config

    env = _job_env()
    ident = ident_of(spec)
    if env.num_nodes > 1:  # --nproc-per-config N counts every node's processes
        port = 20000 + sum(map(ord, env.job_id)) * 7919 % 20000  # one port per array task
        per_node = max(1, int(spec.get("nproc_per_config") or 1) // env.num_nodes)
        spec = dict(spec, nnodes=env.num_nodes, node_rank=env.node, nproc_per_config=per_node)
        spec.update(master_addr=env.hostnames[0], master_port=port)
        if env.node > 0:
            run_config(spec, out_dir)
            return {**ident, "node_rank": env.node}
    with _Heartbeat(out_dir, ident, env.job_id) as hb:
        row = run_config(spec, out_dir)
        hb.status = str(row.get("status", ""))
    return {**ident, "status": row.get("status"), "message": row.get("message", "")}
