"""The torch.distributed helpers in one process, and `scmgen classify` under torchrun with two gloo
processes: it finishes, rank 0 alone writes, and the ranks train on disjoint shards."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scmgen.distributed import DistInfo, ShardSampler, all_reduce_sum, init_from_env, on_main, unwrap, wrap_ddp
from tests.test_classifier import make_data

TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_shards_are_disjoint_cover_the_data_and_follow_seed_and_epoch() -> None:
    shards = [ShardSampler(10, rank=r, world_size=3, seed=5) for r in range(3)]
    epoch0 = [set(s.indices(0).tolist()) for s in shards]
    assert all(len(e) == 3 for e in epoch0)
    assert not (epoch0[0] & epoch0[1] or epoch0[1] & epoch0[2] or epoch0[0] & epoch0[2])
    assert torch.equal(shards[0].indices(0), ShardSampler(10, 0, 3, seed=5).indices(0))  # deterministic
    assert not torch.equal(shards[0].indices(0), shards[0].indices(1))  # reshuffled per epoch
    full = [ShardSampler(10, r, 3, shuffle=False, drop_last=False).indices() for r in range(3)]
    assert sorted(torch.cat(full).tolist()) == list(range(10)) and [len(f) for f in full] == [4, 3, 3]
    stream = ShardSampler(10, 1, 3, seed=5).batches(2)
    first_batches = [shards[1].indices(0)[:2].tolist(), shards[1].indices(1)[:2].tolist()]  # 3 items: 1 batch/epoch
    assert [next(stream).tolist() for _ in range(2)] == first_batches
    with pytest.raises(ValueError, match="cannot fill"):
        next(ShardSampler(4, 0, 2).batches(3))


def test_single_process_helpers_are_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_from_env("cpu")
    assert info == DistInfo(device=torch.device("cpu")) and info.is_main and not info.distributed
    module = torch.nn.Linear(2, 2)
    assert wrap_ddp(module, info) is module and unwrap(module) is module
    assert all_reduce_sum({"b": 2.0, "a": 1.0}, info) == {"b": 2.0, "a": 1.0}
    assert on_main(info, lambda: 7) == 7 and on_main(DistInfo(rank=1, world_size=1), lambda: 7) is None


# Runs `scmgen classify` in each torchrun process, recording the training batches each rank drew
# and which rank wrote what.
WORKER = """
import json, os, sys
from pathlib import Path
import scmgen.classifier, scmgen.classify, scmgen.distributed
from scmgen.cli import main

seen, writes = {}, []
draw = scmgen.distributed.ShardSampler.batches
def recording_batches(self, batch_size, epoch=0):
    for batch in draw(self, batch_size, epoch):
        seen.setdefault(str(self.n), []).extend(batch.tolist())
        yield batch
scmgen.distributed.ShardSampler.batches = recording_batches
save, write = scmgen.classifier.InvariantClassifier.save_pretrained, scmgen.classify.write_results
scmgen.classifier.InvariantClassifier.save_pretrained = lambda *a, **k: (writes.append("model"), save(*a, **k))[1]
scmgen.classify.write_results = lambda *a, **k: (writes.append("results"), write(*a, **k))[1]
sys.argv = ["scmgen", "classify", *sys.argv[1:]]
try:
    main()
finally:
    trace = {"seen": seen, "writes": writes, "world": os.environ["WORLD_SIZE"]}
    Path(os.environ["TRACE_DIR"], f"rank{os.environ['RANK']}.json").write_text(json.dumps(trace))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_classify_under_torchrun_trains_on_disjoint_shards_and_rank0_writes(tmp_path: Path) -> None:
    real, cf, _ = make_data(tmp_path / "data", n_real=64, n_cf=96)
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "out"
    env = {**os.environ, "TRACE_DIR": str(tmp_path)}
    env.pop("WORLD_SIZE", None)
    # global batch 16 -> 8 per rank: 4 real + 4 counterfactual; one epoch = 32 real images per rank
    proc = subprocess.run(
        [str(TORCHRUN), "--nnodes=1", "--nproc_per_node=2", f"--master_port={free_port()}", str(tmp_path / "worker.py"),
         "--real", str(real), "--counterfactuals", str(cf), "--backbone", "mnist.cnn", "--image-size", "16",
         "--epochs", "1", "--batch-size", "16", "--val", str(real), "--cf-val", str(cf), "--workers", "0",
         "--device", "cpu", "--out", str(out), "--quiet"],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    traces = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [t["world"] for t in traces] == ["2", "2"]
    assert traces[0]["writes"] == ["model", "results"] and traces[1]["writes"] == []
    for n, per_rank in (("64", 32), ("96", 32)):  # each rank: 8 steps of 4 real and 4 counterfactual images
        a, b = (set(t["seen"][n]) for t in traces)
        assert len(a) == len(b) == per_rank and not a & b
    assert set(traces[0]["seen"]["64"]) | set(traces[1]["seen"]["64"]) == set(range(64))
    report = json.loads((out / "results.json").read_text())
    assert report["training"]["world_size"] == 2 and report["training"]["steps"] == 8
    assert report["training"]["images"] == 8 * 16
    assert report["results"]["real"]["images"] == 64 and report["results"]["counterfactual"]["images"] == 96
    assert sorted(p.name for p in out.iterdir()) == ["model", "results.json", "results.md"]
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "meta.json", "model.safetensors"]
