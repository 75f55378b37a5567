"""One trainer for every graph: per-mechanism optimisers, weighted loss plugins, optional critics.

A step is: draw a real batch, sample the exogenous nodes (root labels conditioned on the batch
where `train.condition` says so), run the SCM, sum the weighted losses, step the mechanisms'
optimisers (generator step first, as in the reference), then step each critic on the same batch.
Everything random comes from the global torch RNG and a per-epoch data permutation, both saved in
checkpoints, so a resumed run repeats an uninterrupted one bit for bit on CPU.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import yaml
from torch import nn

from scmgen import registry
from scmgen.checkpoint import atomic_directory, atomic_write_text, load_module, read_json, safe_torch_load, save_module
from scmgen.data import ImageSet
from scmgen.distributed import DistInfo, ShardSampler, barrier
from scmgen.ema import WeightAverage
from scmgen.errors import ScmgenError, SpecError
from scmgen.graph import DATA_INPUTS
from scmgen.model import SCM, build_plugin
from scmgen.plugins import AdversarialLoss, Mechanism, NodeInfo
from scmgen.precision import autocast
from scmgen.precision import resolve as resolve_precision
from scmgen.progress import progress_bar
from scmgen.spec import OptimizerSpec, dump_spec


def make_optimizer(params: list[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    if spec.name in ("adam", "adamw"):
        cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
        return cls(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return torch.optim.Adadelta(params, lr=spec.lr, weight_decay=spec.weight_decay)


class EpochBatches:
    """Batches of this rank's shard of each epoch's permutation (seeded by seed and epoch), so the
    position (epoch, offset) alone restores the data order."""

    def __init__(self, n: int, batch_size: int, seed: int, info: DistInfo = DistInfo()) -> None:
        self.sampler = ShardSampler(n, info.rank, info.world_size, seed)
        if len(self.sampler) < batch_size:
            raise ScmgenError(f"the data set has {n} images, fewer than one batch of {batch_size} per process")
        self.batch_size = batch_size
        self.epoch, self.offset = 0, 0
        self._perm = self.sampler.indices(0)

    def next(self) -> torch.Tensor:
        if self.offset + self.batch_size > len(self._perm):
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self.sampler.indices(self.epoch)
        idx = self._perm[self.offset:self.offset + self.batch_size]
        self.offset += self.batch_size
        return idx

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._perm = self.sampler.indices(self.epoch)


def _collective(tensors: list[torch.Tensor], op: Callable[[torch.Tensor], None]) -> None:
    """Run one collective over all `tensors` at once (flattened), then copy the result back."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    op(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast_buffers(modules: list[nn.Module], info: DistInfo) -> None:
    """Give every process rank 0's floating buffers (batch-norm statistics), as DDP does."""
    buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if info.distributed and buffers:
        _collective(buffers, lambda flat: dist.broadcast(flat, src=0))


def average_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """Average gradients over the processes in one flat all-reduce (data parallelism without
    wrapping: the SCM calls its mechanisms by name, so DDP's forward hooks do not fit)."""
    grads = [p.grad for p in params if p.grad is not None]
    if info.distributed and grads:
        _collective(grads, lambda flat: (dist.all_reduce(flat), flat.div_(info.world_size)))


@dataclass
class LossTerm:
    name: str
    module: nn.Module
    weight: float
    inputs: dict[str, str]
    warmup: int = 0
    critic: nn.Module | None = None
    critic_opt: torch.optim.Optimizer | None = None


@dataclass
class TrainResult:
    step: int
    total_steps: int
    seconds: float
    interrupted: bool
    last_losses: dict[str, float] = field(default_factory=dict)
    start_step: int = 0  # where this call began: a resumed run's `seconds` cover only step - start_step

    @property
    def steps_run(self) -> int:
        """The steps this call trained, the ones `seconds` timed."""
        return self.step - self.start_step


class Trainer:
    """Train `model` on `data` as its spec's `train` and `losses` sections say, writing into `out`."""

    def __init__(self, model: SCM, data: ImageSet | None, out: str | Path, device: str | None = None,
                 progress: bool = True, tensorboard: bool = True, info: DistInfo | None = None) -> None:
        self.model, self.data, self.out = model, data, Path(out)
        self.spec = model.spec
        self.tcfg = self.spec.train
        self.info = info or DistInfo(device=torch.device(device or self.tcfg.device))
        self.device = self.info.device
        self.precision = resolve_precision(self.tcfg.precision, self.device)  # "auto" becomes what runs
        self.progress, self.tensorboard = progress and self.info.is_main, tensorboard and self.info.is_main
        if any(t == "data.image" or t == "data.label" for ls in self.spec.losses.values() for t in ls.inputs.values()) \
                or self.tcfg.condition or any(ls.critic for ls in self.spec.losses.values()):
            if data is None:
                raise SpecError(model.source, "data", "training this graph needs a data set")
        torch.manual_seed(self.tcfg.seed + self.info.rank)  # each process draws its own noise
        self.model.to(self.device).train()
        self.terms = [self._build_term(name) for name in self.spec.losses]
        if not self.terms:
            raise SpecError(model.source, "losses", "nothing to train: the graph has no losses")
        self.optimizers = {
            name: make_optimizer(list(m.parameters()), self.tcfg.optimizers.get(name, self.tcfg.optimizer))
            for name, m in model.mechanisms.items()
            if self.spec.nodes[name].trainable and any(p.requires_grad for p in m.parameters())}
        self.average = WeightAverage(self._trained(), self.tcfg.ema) if self.tcfg.ema else None
        # graphs trained against a teacher need no data: then an "epoch" is not defined
        self.batches = EpochBatches(len(data), self.tcfg.batch_size, self.tcfg.seed, self.info) \
            if data is not None else None
        if self.tcfg.steps is None and data is None:
            raise SpecError(model.source, "train.epochs", "a graph without data trains for a number of steps: set train.steps")
        per_step = self.tcfg.batch_size * self.tcfg.accumulate
        per_step *= self.info.world_size
        self.total_steps = self.tcfg.steps or max(1, math.ceil((self.tcfg.epochs or 1.0) * len(data) / per_step))
        self.step = 0

    def _trained(self) -> dict[str, nn.Module]:
        return {name: self.model.mechanisms[name] for name in self.optimizers}

    def _node_info(self, ref: str) -> NodeInfo:
        return NodeInfo(ref, "data") if ref in DATA_INPUTS else self.model.node_info(ref)

    def _build_term(self, name: str) -> LossTerm:
        ls = self.spec.losses[name]
        inputs = {role: self._node_info(ref) for role, ref in ls.inputs.items()}
        module = build_plugin("losses", ls.plugin, inputs, ls.params, self.model.source, f"losses.{name}")
        term = LossTerm(name, module.to(self.device), ls.weight, dict(ls.inputs), ls.warmup)
        if isinstance(module, AdversarialLoss):
            if ls.critic is None:
                raise SpecError(self.model.source, f"losses.{name}.critic", f"adversarial loss '{ls.plugin}' needs a critic")
            label = inputs.get("label")
            critic = self._build_critic(name, label.classes if label else None)
            term.critic = critic.to(self.device)
            term.critic_opt = make_optimizer(list(critic.parameters()), ls.critic.optimizer or self.tcfg.optimizer)
        elif ls.critic is not None:
            raise SpecError(self.model.source, f"losses.{name}.critic", f"loss '{ls.plugin}' takes no critic")
        return term

    def _build_critic(self, name: str, classes: int | None) -> nn.Module:
        ls = self.spec.losses[name]
        cls = registry.get("critics", ls.critic.plugin)
        try:
            return cls(classes, **ls.critic.params)
        except (TypeError, ValueError) as e:
            raise SpecError(self.model.source, f"losses.{name}.critic.params", f"plugin '{ls.critic.plugin}': {e}") from None

    # -- one step ---------------------------------------------------------------------------
    def _inputs(self, term: LossTerm, values: dict[str, torch.Tensor], real: torch.Tensor | None,
                label: torch.Tensor | None) -> dict[str, torch.Tensor]:
        batch = {"data.image": real, "data.label": label}
        return {role: batch[ref] if ref in batch else values[ref] for role, ref in term.inputs.items()}

    def train_step(self) -> dict[str, float]:
        """One optimiser step (over `accumulate` micro-batches); returns the weighted losses."""
        accumulate = self.tcfg.accumulate
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        for term in self.terms:
            if term.critic is not None:
                term.critic.requires_grad_(False)
        logged: dict[str, float] = {}
        kept: list[tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]] = []
        for _ in range(accumulate):
            real = label = None
            if self.data is not None and self.batches is not None:
                real, label = self.data.batch(self.batches.next())
                real, label = real.to(self.device, non_blocking=True), label.to(self.device)
            exo = self.model.sample_exogenous(self.tcfg.batch_size)
            for node in self.tcfg.condition:
                exo[node] = label
            with autocast(self.device, self.precision):
                values = self.model(exo)
                total = torch.zeros((), device=self.device)
                for term in self.terms:
                    inputs = self._inputs(term, values, real, label)
                    loss = term.module(term.critic, **inputs) if term.critic is not None else term.module(**inputs)
                    weight = term.weight * min(1.0, self.step / term.warmup) if term.warmup else term.weight
                    total = total + weight * loss.float()
                    logged[term.name] = logged.get(term.name, 0.0) + weight * loss.item() / accumulate
            (total / accumulate).backward()
            kept.append(({k: v.detach() for k, v in values.items()}, real, label))
        for name, opt in self.optimizers.items():
            average_gradients(list(self.model.mechanisms[name].parameters()), self.info)
            opt.step()
        for term in self.terms:
            if term.critic is not None:
                logged[f"{term.name}.critic"] = self._critic_step(term, kept)
        broadcast_buffers([self.model, *(t.critic for t in self.terms if t.critic is not None)], self.info)
        if self.average is not None:
            self.average.update(self._trained())
        self.step += 1
        return logged

    def _critic_step(self, term: LossTerm, kept: list[tuple[dict[str, torch.Tensor], Any, Any]]) -> float:
        assert term.critic is not None and term.critic_opt is not None
        term.critic.requires_grad_(True)
        term.critic_opt.zero_grad(set_to_none=True)
        total = 0.0
        for values, real, label in kept:
            inputs = self._inputs(term, values, real, label)
            with autocast(self.device, self.precision):
                loss = term.module.critic_loss(term.critic, real, inputs["fake"], label, inputs.get("label"))
            (loss.float() / len(kept)).backward()
            total += loss.item() / len(kept)
        average_gradients(list(term.critic.parameters()), self.info)
        term.critic_opt.step()
        return total

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N atomically, point `latest` at it, drop the oldest extras.
        Under torchrun rank 0 writes, holding every rank's RNG state, and the others wait."""
        target = self.checkpoint_root / f"step_{self.step:07d}"
        rng = self._gather_rng()
        if not self.info.is_main:
            barrier(self.info)
            return target
        with atomic_directory(target) as tmp:
            self.model.write_into(tmp, {"step": self.step, "seed": self.tcfg.seed, "total_steps": self.total_steps,
                                        "precision": self.precision})
            for term in self.terms:
                if term.critic is not None:
                    save_module(term.critic, tmp / f"critic.{term.name}.safetensors")
            state = {
                "step": self.step,
                "batches": self.batches.state() if self.batches is not None else None,
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "critic_optimizers": {t.name: t.critic_opt.state_dict() for t in self.terms if t.critic_opt},
                "rng": rng,
                "ema": self.average.state_dict() if self.average is not None else None,
            }
            torch.save(state, tmp / "trainer_state.pt")
        atomic_write_text(self.checkpoint_root / "latest", target.name + "\n")
        kept = sorted(p for p in self.checkpoint_root.glob("step_*") if p.is_dir())
        for old in kept[:-self.tcfg.keep_checkpoints]:
            if old != target:
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()
        barrier(self.info)
        return target

    def _gather_rng(self) -> list[torch.Tensor]:
        """[cpu state, cuda state?] of every rank, in rank order."""
        mine = [torch.get_rng_state()]
        if self.device.type == "cuda":
            mine.append(torch.cuda.get_rng_state(self.device))
        if not self.info.distributed:
            return [torch.cat(mine)]
        everyone: list = [None] * self.info.world_size
        dist.all_gather_object(everyone, torch.cat(mine))
        return everyone

    def resume(self) -> int:
        """Restore the latest checkpoint in `out`; returns its step (0 when there is none)."""
        latest = self.checkpoint_root / "latest"
        if not latest.exists():
            return 0
        ckpt = self.checkpoint_root / latest.read_text().strip()
        source = str(ckpt)
        stored = (ckpt / "graph.yaml").read_text() if (ckpt / "graph.yaml").exists() else ""
        mine = dump_spec(self.spec)
        if _architecture(stored) != _architecture(mine):
            raise SpecError(source, "graph.yaml", f"checkpoint is for a different graph than '{self.model.source}' "
                            "(nodes, losses or data differ); use another --out or the same graph")
        for name, module in self.model.saved_mechanisms().items():
            load_module(module, ckpt / f"{name}.safetensors", source)
        for term in self.terms:
            if term.critic is not None:
                load_module(term.critic, ckpt / f"critic.{term.name}.safetensors", source)
        state = safe_torch_load(ckpt / "trainer_state.pt", source)
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for term in self.terms:
            if term.critic_opt is not None:
                term.critic_opt.load_state_dict(state["critic_optimizers"][term.name])
        if self.batches is not None:
            self.batches.restore(state["batches"])
        if self.average is not None:
            if state.get("ema") is None:
                raise SpecError(source, "trainer_state.pt", "saved without train.ema: resume with the graph it was "
                                "trained with")
            self.average.load_state_dict(state["ema"])
        rngs = state["rng"]
        if len(rngs) != self.info.world_size:
            raise SpecError(source, "trainer_state.pt", f"saved by {len(rngs)} processes, resumed with "
                            f"{self.info.world_size}: resume with the same number of processes")
        mine = rngs[self.info.rank]
        cpu_size = torch.get_rng_state().numel()
        torch.set_rng_state(mine[:cpu_size])
        if self.device.type == "cuda" and mine.numel() > cpu_size:
            torch.cuda.set_rng_state(mine[cpu_size:], self.device)
        self.step = int(state["step"])
        read_json(ckpt / "meta.json", source)
        return self.step

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, on_sample: Any = None) -> TrainResult:
        """Run to `total_steps`, checkpointing as configured; Ctrl-C saves a checkpoint and returns. With
        `train.ema` the model ends holding the averaged weights (checkpoints keep the live ones)."""
        interrupted = False
        stop = {"now": False}
        previous = signal.getsignal(signal.SIGINT)

        def request_stop(signum: int, frame: Any) -> None:
            stop["now"] = True

        in_main = _is_main_thread()
        if in_main:
            signal.signal(signal.SIGINT, request_stop)
        writer = self._writer()
        start, start_step = time.perf_counter(), self.step
        losses: dict[str, float] = {}
        try:
            with progress_bar(self.progress, "losses") as progress:
                task = progress.add_task(self.spec.name, total=self.total_steps, completed=self.step, losses="")
                while self.step < self.total_steps:
                    losses = self.train_step()
                    if self.step % self.tcfg.log_every == 0 or self.step == self.total_steps:
                        if writer is not None:
                            for k, v in losses.items():
                                writer.add_scalar(f"loss/{k}", v, self.step)
                        progress.update(task, losses=" ".join(f"{k}={v:.3f}" for k, v in losses.items()))
                    progress.update(task, completed=self.step)
                    if self.tcfg.sample_every and self.step % self.tcfg.sample_every == 0 and on_sample \
                            and self.info.is_main:
                        on_sample(self, writer)
                    if self.tcfg.checkpoint_every and self.step % self.tcfg.checkpoint_every == 0:
                        self.save_checkpoint()
                        self._log_diagnostics(writer)
                    if self._agree(stop["now"]):
                        interrupted = True
                        break
            if interrupted or not self.tcfg.checkpoint_every or self.step % self.tcfg.checkpoint_every:
                self.save_checkpoint()
                self._log_diagnostics(writer)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
            if writer is not None:
                writer.close()
        if self.average is not None:  # the checkpoint keeps the live weights to resume from; the model gets the average
            self.average.copy_to(self._trained())
        self.model.eval()
        return TrainResult(self.step, self.total_steps, time.perf_counter() - start, interrupted, losses, start_step)

    def _log_diagnostics(self, writer: Any) -> None:
        """Every mechanism's diagnostics() (live weights) under '<node>/<name>', at checkpoints only (they cost
        forward passes): curves that show a collapsing class long before the run ends."""
        if writer is None or not self.info.is_main:
            return
        for node, mechanism in self.model.mechanisms.items():
            if isinstance(mechanism, Mechanism):
                for name, value in mechanism.diagnostics().items():
                    writer.add_scalar(f"{node}/{name}", value, self.step)

    def _agree(self, flag: bool) -> bool:
        """True if any process saw the flag, so all processes stop at the same step."""
        if not self.info.distributed:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t)
        return bool(t.item())

    def _writer(self) -> Any:
        if not self.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / "tensorboard"))


def _architecture(graph_yaml: str) -> Any:
    """What must match for a checkpoint to be resumed: nodes, output, losses and data (not train)."""
    raw = yaml.safe_load(graph_yaml) or {}
    return {k: raw.get(k) for k in ("nodes", "output", "losses", "data")}


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
