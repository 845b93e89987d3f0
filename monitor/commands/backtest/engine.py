"""Where a backtest's batches are scored: in this process, on a local Ray cluster started for the job and stopped
after it, or on an existing Ray cluster. Ray Data streams the archive through a pool of actors (``BatchJudge``,
each loading the models once; one GPU each where the cluster has GPUs) and the rows back to this process, which
alone writes them.

A local cluster touches no network: usage statistics off, no dashboard, every server on the loopback interface
(Ray takes the loopback address as the node's address where it is told that it runs a single-machine cluster),
and a random token, in this process's environment only, that its servers require of every caller."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from monitor.commands.backtest.scoring import BacktestError, BatchJudge

log = logging.getLogger(__name__)

# set before Ray is imported, for this process and every process of a cluster it starts
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}  # Ray's usage statistics are reported over the internet by default
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # a single-machine cluster: the node's address is loopback


def ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def in_process(judge_kwargs: dict, items: list[dict], batch_size: int) -> Iterator[dict]:
    """The batches' rows, scored here by one ``BatchJudge(**judge_kwargs)``."""
    judge = BatchJudge(**judge_kwargs)
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        yield judge({k: [it[k] for it in chunk] for k in chunk[0]})


@dataclass
class Cluster:
    """A Ray cluster for the job: ``address`` "local" starts one on this machine, of all its CPUs and without a
    dashboard, and stops it at the end; any other address (``auto``, ``ray://head:10001``, ``head:6379``) joins
    that one."""

    address: str = "local"

    def __enter__(self) -> "Cluster":
        os.environ.update(QUIET_ENV)
        self._tmp = None
        if self.address == "local":
            os.environ.update(LOCAL_ENV)
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # never written to disk (Ray's default: ~/.ray)
        import ray
        import ray.data

        logging.getLogger("ray").setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on progress bars and deprecations
        if self.address == "local":
            self._tmp = tempfile.mkdtemp(prefix="ray-")  # the cluster's sockets and logs, removed at the end
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     _temp_dir=self._tmp, log_to_driver=False, logging_level=logging.WARNING)
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise BacktestError(f"--ray {self.address}: cannot join that Ray cluster: {exc}") from None
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the command shows its own
        ctx.print_on_execution_start = False
        res = ray.cluster_resources()
        self.total_cpus, self.total_gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
        log.info("Ray cluster %s: %d CPU, %d GPU, %d node(s)", self.address, self.total_cpus, self.total_gpus,
                 len([n for n in ray.nodes() if n.get("Alive")]))
        return self

    def __exit__(self, *exc) -> None:
        import ray

        ray.shutdown()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def run(self, judge_kwargs: dict, items: list[dict], batch_size: int, actors: int | None = None,
            cpus_per_actor: int = 1) -> Iterator[dict]:
        """The batches' rows, scored by a pool of actors (``actors``, default: one per ``cpus_per_actor`` CPUs of
        the cluster, or one per GPU where it has GPUs), streamed back as they are done. An actor that dies (its
        process killed, its node lost) is restarted and its batch retried by Ray."""
        import ray
        import ray.data

        base = judge_kwargs["baseline"]
        judge_kwargs = {**judge_kwargs, "threads": cpus_per_actor, "new": [ray.put(judge_kwargs["new"])],
                        "baseline": None if base is None else [ray.put(base)]}  # the references held until the end
        gpus = 1 if self.total_gpus else 0
        size = actors or (self.total_gpus or max(1, self.total_cpus // cpus_per_actor))
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 10_000)))
        # an actor pool's actors are restarted and their tasks retried without end by default (max_restarts and
        # max_task_retries -1): a killed actor costs its batch, not the job (tests/test_backtest.py kills one)
        ds = ds.map_batches(BatchJudge, fn_constructor_kwargs=judge_kwargs, batch_size=batch_size,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
                            num_cpus=cpus_per_actor, num_gpus=gpus)
        log.info("scoring on %d actor(s), %d CPU%s each", size, cpus_per_actor, " and 1 GPU" if gpus else "")
        try:
            yield from ds.iter_batches(batch_size=None, batch_format="numpy")
        except Exception as exc:  # Ray Data re-raises the actors' errors as their own types
            raise BacktestError(f"the Ray job failed ({type(exc).__name__}): {str(exc).splitlines()[0]}; the rows "
                                "scored so far are kept") from None
