"""Engine overhead: the generic engine (Trainer.train_step, sampling.counterfactual_batch) against a
hand-written loop calling the same modules for the same computation, timed interleaved in one run.

    python benchmarks/engine_overhead.py                 # ~3-4 min on 2 cores
    python benchmarks/engine_overhead.py --quick         # ~1 min

Graph: graphs/cgn_double_colored_mnist.yaml on its real training data (double-colored MNIST), with
randomly initialised weights (speed does not depend on the values).

Training: two Trainers are built from the same spec and seed (identical weights, critics, optimisers
and data order). One is stepped by `Trainer.train_step()`, the other by `hand_train_step`, which
calls the three mechanisms, the composer, the LSGAN, binary-mask, mask-variation and layer-colour losses, backward, the Adam steps,
the critic step (with R1 where the graph sets it) and the weight average (`train.ema`) directly.
From the same RNG state their first-step losses must be equal (the script checks it and prints
it). Generation: `counterfactual_batch` against `hand_generation_same`
(the same work, including the factual textures the engine computes and then discards) and
`hand_generation_minimal` (one mask per group, textures only for the counterfactuals); both must
give the engine's images bit for bit.

Timing: the two paths alternate step by step (ABBA order), and the medians of the per-step times
are compared, so load from other processes affects both alike. Prints a Markdown section and
appends it to benchmarks/RESULTS.md (--out). If the engine is more than 3% slower than the hand
loop, a cProfile of engine steps is printed and summarised in the section.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch
import torch.nn.functional as F
from report import publish

from scmgen.data import ImageSet, load_dataset, to_uint8
from scmgen.model import SCM
from scmgen.precision import autocast
from scmgen.provenance import run_metadata
from scmgen.sampling import counterfactual_batch
from scmgen.trainer import Trainer

GRAPH = ROOT / "graphs" / "cgn_double_colored_mnist.yaml"
BINARY_MASK_WEIGHT = 0.3  # the graph's losses.binary_mask.weight (checked against the spec)
MASK_VARIATION_WEIGHT = 0.3  # the graph's losses.mask_variation.weight (checked too)
LAYER_COLOURS_WEIGHT, LAYER_COLOURS_PIXELS = 1.0, 128  # losses.layer_colours: weight, and the plugin's default pixels
TARGET = 1.03  # the engine may be at most 3% slower


# -- training --------------------------------------------------------------------------------------
def build_trainer(batch: int, precision: str, data: ImageSet) -> Trainer:
    # without the binary mask loss's warm-up, so that the first step already compares that loss too
    # (the warm-up only scales it by a number)
    model = SCM.from_yaml(GRAPH, [f"train.batch_size={batch}", f"train.precision={precision}",
                                  "losses.binary_mask.warmup=0"])
    return Trainer(model, data, "/tmp/scmgen-bench-overhead", progress=False, tensorboard=False)


class HandLoop:
    """The double-colored CGN's training step written out by hand, on a Trainer's modules."""

    def __init__(self, trainer: Trainer) -> None:
        spec = trainer.spec
        assert spec.losses["binary_mask"].weight == BINARY_MASK_WEIGHT and spec.losses["gan"].weight == 1.0
        assert spec.losses["binary_mask"].warmup == 0 and spec.losses["mask_variation"].weight == MASK_VARIATION_WEIGHT
        assert spec.losses["layer_colours"].weight == LAYER_COLOURS_WEIGHT and not spec.losses["layer_colours"].params
        assert spec.train.accumulate == 1 and dict(spec.train.condition) == {"y": "label"}
        mech = trainer.model.mechanisms
        self.backdrop, self.mask, self.foreground = mech["backdrop"], mech["mask"], mech["foreground"]
        gan = next(t for t in trainer.terms if t.name == "gan")
        self.critic, self.critic_opt = gan.critic, gan.critic_opt
        self.opts = list(trainer.optimizers.values())
        self.data, self.batches = trainer.data, trainer.batches
        self.batch, self.precision = spec.train.batch_size, spec.train.precision
        self.device = trainer.device
        self.r1 = spec.losses["gan"].params.get("r1", 0.0)
        # the weight average, by hand: shadow copies of the generators' parameters and float buffers
        self.ema, self.updates = spec.train.ema, 0
        self.live = [t for m in (self.backdrop, self.mask, self.foreground)
                     for t in (*m.parameters(), *(b for b in m.buffers() if b.is_floating_point()))]
        self.shadow = [t.detach().clone() for t in self.live]

    def step(self) -> dict[str, float]:
        n = self.batch
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        self.critic.requires_grad_(False)
        real, label = self.data.batch(self.batches.next())
        # the exogenous draws in the graph's order (u_background, u_shape, u_texture, y); y is drawn
        # only to keep the random stream the engine's: training conditions y on the data label
        u_bg, u_shape, u_tex = torch.randn(n, 32), torch.randn(n, 32), torch.randn(n, 32)
        torch.randint(10, (n,))
        with autocast(self.device, self.precision):
            b = self.backdrop(u_bg, label)  # mechanisms in the graph's topological order (RNG: shifts)
            m = self.mask(u_shape, label)
            f = self.foreground(u_tex, label)
            x = m * f + (1 - m) * b
            d = self.critic(x, label)
            gan = F.mse_loss(d, torch.ones_like(d))
            mf = m.float()
            binary = -(mf * torch.log2(mf) + (1 - mf) * torch.log2(1 - mf)).mean()
            variation = (mf[..., 1:, :] - mf[..., :-1, :]).abs().mean() + (mf[..., :, 1:] - mf[..., :, :-1]).abs().mean()
            some = [x.float().flatten(2)[:, :, torch.randint(32 * 32, (LAYER_COLOURS_PIXELS,))].transpose(1, 2)
                    for x in (f, b, real)]  # random pixels of each, drawn in this order
            layers, target = torch.cat(some[:2], 1), some[2]
            with torch.no_grad():  # the nearest pixels, as the plugin finds them; only those pairs are differentiated
                distance = torch.cdist(layers, target)
                to_real, to_layer = distance.argmin(2), distance.argmin(1)
            near_real = target.gather(1, to_real[..., None].expand(-1, -1, 3))
            near_layer = layers.gather(1, to_layer[..., None].expand(-1, -1, 3))
            colours = (layers - near_real).pow(2).sum(-1).mean() + (target - near_layer).pow(2).sum(-1).mean()
            total = (gan.float() + BINARY_MASK_WEIGHT * binary.float() + MASK_VARIATION_WEIGHT * variation
                     + LAYER_COLOURS_WEIGHT * colours)
        total.backward()
        for opt in self.opts:
            opt.step()
        self.critic.requires_grad_(True)
        self.critic_opt.zero_grad(set_to_none=True)
        leaf = real.detach().requires_grad_(bool(self.r1))
        with autocast(self.device, self.precision):
            seen = leaf.clone() if self.r1 else real
            d_real, d_fake = self.critic(seen, label), self.critic(x.detach(), label)
            critic = (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake))) / 2
            if self.r1:
                (g,) = torch.autograd.grad(d_real.float().sum(), leaf, create_graph=True)
                critic = critic + self.r1 / 2 * g.float().pow(2).flatten(1).sum(1).mean()
        critic.float().backward()
        self.critic_opt.step()
        if self.ema:
            self.updates += 1
            keep = min(self.ema, (1 + self.updates) / (10 + self.updates))
            with torch.no_grad():
                for s, t in zip(self.shadow, self.live):
                    s.lerp_(t, 1 - keep)
        return {"gan": gan.item(), "binary_mask": BINARY_MASK_WEIGHT * binary.item(),
                "mask_variation": MASK_VARIATION_WEIGHT * variation.item(),
                "layer_colours": LAYER_COLOURS_WEIGHT * colours.item(), "gan.critic": critic.item()}


def check_same_losses(engine: Trainer, hand: HandLoop) -> tuple[bool, str]:
    """One step of each from the same RNG state and identical initial state: losses must match."""
    state = torch.get_rng_state()
    a = engine.train_step()
    torch.set_rng_state(state)
    b = hand.step()
    same = a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    return same, ", ".join(f"{k} {a[k]:.6f}/{b.get(k, float('nan')):.6f}" for k in a)


# -- generation ------------------------------------------------------------------------------------
@torch.inference_mode()
def hand_generation(model: SCM, groups: int, per_shape: int, generator: torch.Generator, precision: str,
                    minimal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`counterfactual_batch` by hand. minimal=False is the naive way (the factual pass computes all
    mechanisms and the image for the groups, then every factual value is repeated); minimal=True
    computes only the groups' masks, as the engine does. Both draw the engine's random numbers."""
    mech = model.mechanisms
    m = groups * per_shape
    g = generator
    u_bg, u_shape, u_tex, y = torch.randn(groups, 32, generator=g), torch.randn(groups, 32, generator=g), \
        torch.randn(groups, 32, generator=g), torch.randint(10, (groups,), generator=g)
    with autocast(model.device, precision):  # the engine's factual pass runs under autocast too
        mask = mech["mask"](u_shape, y)
        if not minimal:  # the factual textures and image, discarded below, and the repeats of every value
            b0, f0 = mech["backdrop"](u_bg, y), mech["foreground"](u_tex, y)
            image0 = mask * f0 + (1 - mask) * b0
            for v in (u_bg, u_shape, u_tex, b0, f0, image0):
                v.repeat_interleave(per_shape, 0)
    mask, shape = mask.repeat_interleave(per_shape, 0), y.repeat_interleave(per_shape, 0)
    texture, background = torch.randint(10, (m,), generator=g), torch.randint(10, (m,), generator=g)
    fresh_bg, _, fresh_tex, _ = torch.randn(m, 32, generator=g), torch.randn(m, 32, generator=g), \
        torch.randn(m, 32, generator=g), torch.randint(10, (m,), generator=g)
    with autocast(model.device, precision):
        b = mech["backdrop"](fresh_bg, background)
        f = mech["foreground"](fresh_tex, texture)
        x = mask * f + (1 - mask) * b
    return to_uint8(x).cpu(), torch.stack([shape, texture, background], 1)


def check_same_images(model: SCM, groups: int, per_shape: int, precision: str) -> bool:
    ref = counterfactual_batch(model, groups, per_shape, torch.Generator().manual_seed(7), precision)
    for minimal in (False, True):
        got = hand_generation(model, groups, per_shape, torch.Generator().manual_seed(7), precision, minimal)
        if not (torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])):
            return False
    return True


# -- timing ----------------------------------------------------------------------------------------
def interleaved(fns: list[Callable[[], Any]], reps: int) -> list[float]:
    """Median seconds per call of each fn, alternating them (ABBA...) so that load hits all alike."""
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(reps):
        for i in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def profile_engine(trainer: Trainer, steps: int) -> str:
    """The engine's own Python (scmgen/) by self time, over `steps` training steps."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        trainer.train_step()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("tottime")
    stats.print_stats(r"scmgen/", 12)
    total = sum(v[2] for v in stats.stats.values())  # all self time
    mine = sum(v[2] for k, v in stats.stats.items() if "/scmgen/" in k[0])
    return f"engine Python self time: {mine / steps * 1e3:.2f} ms/step of {total / steps * 1e3:.1f} ms/step\n" \
        + buf.getvalue()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-batches", default="16,64", help="training batch sizes (default 16,64)")
    parser.add_argument("--gen-batches", default="100,500", help="generation batch sizes (per_shape 10)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--train-reps", type=int, default=40, help="timed steps per path and setting")
    parser.add_argument("--gen-reps", type=int, default=8, help="timed batches per path and setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="batch 64 / 100 only, fewer repetitions (~1 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md",
                        help="append the results here ('-': do not write)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_batches, args.gen_batches, args.train_reps, args.gen_reps, args.warmup = "64", "100", 10, 6, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    precisions = args.precisions.split(",")
    data: ImageSet | None = None
    train_rows, gen_rows, checks, profiles = [], [], [], []
    result: dict[str, Any] = {"train": {}, "generation": {}, "same_losses": True, "same_images": True}
    for batch in [int(b) for b in args.train_batches.split(",") if b]:
        for precision in precisions:
            if data is None:
                data = load_dataset(SCM.from_yaml(GRAPH).spec, str(GRAPH))
            engine, twin = build_trainer(batch, precision, data), build_trainer(batch, precision, data)
            hand = HandLoop(twin)
            same, detail = check_same_losses(engine, hand)
            result["same_losses"] &= same
            checks.append(f"- training batch {batch} {precision}: first-step losses engine/hand "
                          f"{'identical' if same else 'DIFFER'} ({detail})")
            print(checks[-1], flush=True)
            for _ in range(args.warmup):
                engine.train_step()
                hand.step()
            t_engine, t_hand = interleaved([engine.train_step, hand.step], args.train_reps)
            ratio = t_engine / t_hand
            result["train"][(batch, precision)] = ratio
            train_rows.append(f"| {batch} | {precision} | {t_engine * 1e3:.1f} | {t_hand * 1e3:.1f} | {ratio:.3f} |")
            print(train_rows[-1], flush=True)
            if ratio > TARGET:
                profiles.append(f"training batch {batch} {precision} (ratio {ratio:.3f}):\n"
                                + profile_engine(engine, max(5, args.train_reps // 4)))
                print(profiles[-1], flush=True)
    gen_model = SCM.from_yaml(GRAPH).eval()
    per_shape = 10
    for batch in [int(b) for b in args.gen_batches.split(",") if b]:
        groups = batch // per_shape
        for precision in precisions:
            same = check_same_images(gen_model, groups, per_shape, precision)
            result["same_images"] &= same
            checks.append(f"- generation batch {batch} {precision}: images and labels engine/hand "
                          f"{'identical' if same else 'DIFFER'}")
            print(checks[-1], flush=True)
            gens = [torch.Generator().manual_seed(i) for i in range(3)]
            fns = [partial(counterfactual_batch, gen_model, groups, per_shape, gens[0], precision),
                   partial(hand_generation, gen_model, groups, per_shape, gens[1], precision, False),
                   partial(hand_generation, gen_model, groups, per_shape, gens[2], precision, True)]
            for fn in fns:
                fn()
            t_engine, t_same, t_min = interleaved(fns, args.gen_reps)
            result["generation"][(batch, precision)] = (t_engine / t_same, t_engine / t_min)
            gen_rows.append(f"| {batch} | {precision} | {t_engine * 1e3:.1f} | {t_same * 1e3:.1f} | "
                            f"{t_min * 1e3:.1f} | {t_engine / t_same:.3f} | {t_engine / t_min:.3f} |")
            print(gen_rows[-1], flush=True)
    meta = run_metadata("cpu", wall_seconds=round(time.perf_counter() - start, 1))
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"))
    section = [
        f"\n## Engine overhead vs a hand-written loop (cgn_double_colored_mnist), {meta['time'][:10]}\n",
        (f"- date {meta['time']}; commit {meta['commit']}; torch {meta['torch']}, Python {meta['python']}; "
        f"{meta['cpu']}, {os.cpu_count()} cores, {meta['machine']}; {env}; device cpu"),
        (f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s; 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2-core machine shared with other workers)"),
        ("- weights: randomly initialised (speed does not depend on them); training on the real "
        "double-colored MNIST training set; both paths alternate step by step, medians of "
        f"{args.train_reps} (training) / {args.gen_reps} (generation) timed calls each after warm-up"),
        ("- hand loop: the same modules, optimisers, data order and autocast, losses written inline; "
        "checks from the same RNG state:"), *checks,
        "", "Training step (`Trainer.train_step` vs hand loop; target: ratio <= 1.03):", "",
        "| batch | precision | engine ms/step | hand ms/step | engine/hand |", "|---:|---|---:|---:|---:|",
        *train_rows, "",
        ("Generation batch (`counterfactual_batch`, per_shape 10, vs hand calls of the mechanisms; 'naive' also "
        "computes the factual textures and image that a counterfactual discards, 'minimal' only the masks, as the "
        "engine does):"), "",
        "| batch | precision | engine ms | hand naive ms | hand minimal ms | engine/naive | engine/minimal |",
        "|---:|---|---:|---:|---:|---:|---:|", *gen_rows, ""]
    if profiles:
        section += ["Engine slower than the target: cProfile of engine steps (scmgen/ functions by self time):",
                    "", "```", *[p.rstrip() for p in profiles], "```", ""]
    text = "\n".join(section)
    publish(text, args.out)
    return result


if __name__ == "__main__":
    main()
