"""CGN training under torch.distributed (2 CPU processes, gloo): gradients are averaged, so
every rank ends with the same weights; each rank reads its own disjoint shard of the data."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from tests.conftest import TINY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, out: str, results: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from scmgen import SCM
    from scmgen.data import load_dataset
    from scmgen.distributed import cleanup, init_from_env
    from scmgen.trainer import Trainer

    info = init_from_env("cpu")
    model = SCM.from_yaml(TINY, ["train.steps=4", "train.checkpoint_every=2"])
    trainer = Trainer(model, load_dataset(model.spec, str(TINY)), out, progress=False, tensorboard=False, info=info)
    first = trainer.batches.sampler.indices(0)
    trainer.fit()
    state = torch.cat([v.float().reshape(-1) for v in model.state_dict().values()])
    results[rank] = (state, first, trainer.total_steps)
    cleanup()


def test_two_processes_stay_in_sync(tmp_path: Path) -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(free_port(), str(tmp_path), results), nprocs=2, join=True)
        (w0, idx0, steps0), (w1, idx1, steps1) = results[0], results[1]
    assert torch.equal(w0, w1), "ranks diverged: gradients were not averaged"
    assert steps0 == steps1 == 4
    assert not set(idx0.tolist()) & set(idx1.tolist()) and len(idx0) + len(idx1) == 256
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    state = torch.load(tmp_path / "checkpoints" / "step_0000004" / "trainer_state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0], state["rng"][1])
