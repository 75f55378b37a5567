"""Table 1 on parallel lanes: a pool of worker processes, each on its own share of the cores.

The MNIST models are small: one process on two threads runs a CGN step hardly faster than on one
thread (issue 3's note), so two single-threaded processes do nearly twice the work. The table is
cut into parts (a CGN and its counterfactuals, a cGAN and its samples, the rows reading the same
sets), handed out largest first as their inputs become ready. Every part writes into the stage
cache; once all are done, one ordinary pass over the cache writes table1.json, table1.md and the
figures, exactly as a single-process run would.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from scmgen.progress import progress_bar
from scmgen.provenance import git_commit
from scmgen.table1 import DATASETS, MADE_BY, Settings, Table1, generators_needed


@dataclass(frozen=True)
class Part:
    dataset: str
    seed: int
    stages: tuple[str, ...]  # "cgn" / "gan": trained here, or (when `makes` is None) only read from the cache
    methods: tuple[str, ...]
    makes: str | None
    cost: float

    @property
    def needs(self) -> set[tuple[str, int, str]]:
        return {(self.dataset, self.seed, st) for st in self.stages if st != self.makes}

    def describe(self) -> str:
        what = f"train {self.makes.upper()}" if self.makes else f"{len(self.methods)} classifiers"
        return f"{DATASETS[self.dataset].title} s{self.seed}: {what}"


def plan(settings: Settings) -> list[Part]:
    """The parts of a run, most expensive first (a CGN before everything that can wait for it)."""
    parts: list[Part] = []
    for dataset in settings.datasets:
        for seed in settings.seeds:
            for stage in generators_needed(settings.methods):  # "cgn" before "gan"
                parts.append(Part(dataset, seed, (stage,), (), stage, settings.units(stage) + settings.units(MADE_BY[stage])))
            groups: dict[tuple[str, ...], list[str]] = {}
            for m in settings.methods:
                groups.setdefault(tuple(generators_needed([m])), []).append(m)
            for stages, methods in groups.items():
                parts.append(Part(dataset, seed, stages, tuple(methods), None, settings.classifier_units(methods)))
    return sorted(parts, key=lambda p: (p.makes is None, -p.cost))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device: str) -> int:
    """One lane per core on CPU (at most 4: beyond that a lane's CGN is the critical path), one on a GPU."""
    return min(4, _cores()) if torch.device(device).type == "cpu" else 1


def _start_lane(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt stops
    torch.set_num_threads(threads)


def _run_part(settings: Settings, out: str, part: Part) -> tuple[float, float]:
    """Seconds the part took, and the cost it added to its plan (a CGN that the mask check trained on)."""
    start = time.perf_counter()
    table = Table1(settings, out, progress=False, console=Console(stderr=True, quiet=True), writes=False)
    planned = table.total_units
    try:
        table.run_part(part.dataset, part.seed, list(part.stages), list(part.methods))
    except Exception as error:
        if not _crosses_processes(error):
            raise RuntimeError(f"{type(error).__name__}: {error}") from None
        raise
    return time.perf_counter() - start, table.total_units - planned


def _crosses_processes(error: BaseException) -> bool:
    """Whether `error` survives the pickling that carries it to the parent. One that does not (its
    class's constructor takes more than the message) would kill the pool's result thread, and the
    table would wait for its lane forever."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


def run_lanes(settings: Settings, out: str | Path, workers: int, progress: bool = True,
              console: Console | None = None) -> dict[str, Any]:
    """Run the table's parts on `workers` processes, then assemble its files from the cache."""
    settings.check()
    console = console or Console(stderr=True)
    threads = max(1, _cores() // workers)
    started, started_at, commit = time.perf_counter(), time.time(), git_commit()
    Path(out).mkdir(parents=True, exist_ok=True)
    pending, running, done = plan(settings), set[Part](), set[tuple[str, int, str]]()
    finished: queue.Queue[tuple[Part, tuple[float, float] | BaseException]] = queue.Queue()
    pool = multiprocessing.get_context("spawn").Pool(workers, _start_lane, (threads,), maxtasksperchild=1)
    total = sum(p.cost for p in pending)
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"table1 ({workers} lanes x {threads} threads)", total=total, status="")
            while pending or running:
                for part in [p for p in pending if p.needs <= done][:workers - len(running)]:
                    pending.remove(part)
                    running.add(part)
                    pool.apply_async(_run_part, (settings, str(out), part),
                                     callback=lambda s, p=part: finished.put((p, s)),
                                     error_callback=lambda e, p=part: finished.put((p, e)))
                done_cost = total - sum(p.cost for p in pending) - sum(p.cost for p in running)
                elapsed = time.perf_counter() - started
                eta = f"about {elapsed / done_cost * (total - done_cost) / 60:.0f} min left · " if done_cost else ""
                bar.update(task, status=eta + " | ".join(p.describe() for p in running))
                try:
                    part, result = finished.get(timeout=1.0)
                except queue.Empty:
                    continue
                running.remove(part)
                if isinstance(result, BaseException):
                    raise result
                if part.makes:
                    done.add((part.dataset, part.seed, part.makes))
                seconds, extra = result
                total += extra  # the time left is paced by the work done, extensions included
                bar.update(task, total=total)
                bar.advance(task, part.cost + extra)
                bar.console.print(f"[bold cyan]table1[/] done: {part.describe()} ({seconds / 60:.1f} min)")
    finally:
        pool.terminate()  # on an error or an interrupt, stop the other lanes: finished stages stay cached
        pool.join()
    table = Table1(settings, out, progress=False, console=console)
    table.started, table.lanes_started, table.commit = started, started_at, commit
    table.lanes = {"workers": workers, "threads_per_worker": threads}
    return table.run()
