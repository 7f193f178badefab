"""PyTorch golden fixtures for the `tram` optimizers.

Every update rule of /work/shared/SPEC.md (the project's method contract) is implemented here
a second time, independently of the Rust code, the PyTorch way: an `nn.Module` classifier,
`torch.optim.SGD` / `Adam` / `AdamW` as base optimizers, `LambdaLR` schedules,
`torch.nn.utils.clip_grad_norm_`, SAM-style `first_step` / `second_step` neighborhoods and
`torch.nn.functional.kl_div` / `cross_entropy` for the losses. Everything runs in float64;
the Rust side (f32) must match the final parameters to 1e-5 relative per tensor.

Each case writes `fixtures/<case>.safetensors` (format: fixtures/README.md). The script is
deterministic (fixed seeds, sorted safetensors header): rerunning on one machine rewrites
identical files (another CPU may change float64 results in the last bits, ~1e-16).

Generated with torch 2.15.0 (CPU). To reproduce:

    python -m venv venv && venv/bin/pip install torch==2.15.0 numpy safetensors
    venv/bin/python tests/golden/generate.py            # all cases
    venv/bin/python tests/golden/generate.py tram-noise # only some

Each case states its Rust composition string / config (what is under test) and, separately,
the method as this script understands it from the SPEC (`py=`). The script also checks that
every fixture is discriminative: the final parameters must differ by more than
`MIN_CONTRAST` (relative) from the simpler methods listed as the case's ablations, so a Rust
implementation that silently dropped the ascent, the penalty, the noise or an option would fail.
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save

DTYPE = torch.float64
SEED = 1234
VOCAB, EMBED, HIDDEN, CLASSES, SEQ, BATCH = 20, 8, 16, 4, 5, 6
STEPS = 4
MIN_CONTRAST = 1e-3  # 100x the Rust test's tolerance
OUT = os.environ.get("TRAM_GOLDEN_OUT") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

# ---------------------------------------------------------------------------------------------
# Model: tokens -> embedding -> mean over positions -> [tanh(linear)] x layers -> linear.


class Classifier(nn.Module):
    def __init__(self, layers: int = 1):
        super().__init__()
        self.layers = layers
        self.emb = nn.Embedding(VOCAB, EMBED)
        dims = [EMBED] + [HIDDEN] * layers + [CLASSES]
        for i in range(layers + 1):
            setattr(self, f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))

    def forward_embeds(self, e: torch.Tensor) -> torch.Tensor:
        x = e.mean(dim=1)
        for i in range(1, self.layers + 1):
            x = torch.tanh(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.layers + 1}")(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embeds(self.emb(ids))


# ---------------------------------------------------------------------------------------------
# Distances D(target || current) over rows of logits.


def kl(t: torch.Tensor, c: torch.Tensor, reduction: str, batch: int) -> torch.Tensor:
    """KL(softmax(t) || softmax(c)); kl_div(input=log q, target=log p) = sum p (log p - log q)."""
    lq, lp = F.log_softmax(c, dim=-1), F.log_softmax(t, dim=-1)
    if reduction == "mean":
        return F.kl_div(lq, lp, log_target=True, reduction="batchmean")
    # TRAM reference code: mean over every element (rows x classes), then divided by the batch
    # size again.
    return F.kl_div(lq, lp, log_target=True, reduction="sum") / lq.numel() / batch


MMD_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# d = squared row distance, b = bandwidth. The first four are the reference code's kernels
# (kl.py of tomsherborne/tram_optimizer), under its names and with its formulas; the last two are
# not in it and carry names of their own.
KERNELS = {
    "imq": lambda d2, b: b * (b + d2) ** -1,
    "imq2": lambda d2, b: (b**2 + d2) ** -0.5,
    "imq3": lambda d2, b: b**2 * (b**2 + d2) ** -1,
    "rbf": lambda d2, b: torch.exp(-0.5 * d2 / b),
    "imq-three-halves": lambda d2, b: (b * b + d2).pow(-1.5),
    "gaussian": lambda d2, b: torch.exp(-d2 / (2 * b * b)),
}


def mmd(t: torch.Tensor, c: torch.Tensor, reduction: str, batch: int, kernel="imq2", bandwidths=MMD_BANDWIDTHS) -> torch.Tensor:
    def k(a, b):
        d2 = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
        return sum(KERNELS[kernel](d2, bw) for bw in bandwidths).mean()

    m = k(t, t) + k(c, c) - 2 * k(t, c)
    return m if reduction == "mean" else m / batch


def l2(t: torch.Tensor, c: torch.Tensor, reduction: str, batch: int) -> torch.Tensor:
    """Row norms without any epsilon (exact at small distances); the reference code's reduction
    is the per-row mean divided by the batch size, `(y-x).pow(2).sum(-1).sqrt().mean() / x.size(0)`.
    `reference-row-sum` is the misreading (row sum over the batch size), for ablations only."""
    rows = torch.linalg.vector_norm(t - c, dim=-1)  # its gradient at a zero row is 0, not NaN
    if reduction == "mean":
        return rows.mean()
    if reduction == "reference-row-sum":
        return rows.sum() / batch
    return rows.mean() / batch


def official_delta_f32(t: torch.Tensor, c: torch.Tensor, distance: str, kernel: str) -> torch.Tensor:
    """The reference code's divergence (kl.py, unchanged formulas) on float32 logits, the dtype
    of its models: KL via log_softmax(dtype=float32) and kl_div(reduction="mean"), MMD with float32
    accumulators, L2; each divided by the batch size. Returned in float32."""
    x, y = t.to(torch.float32), c.to(torch.float32)

    def _kl(x, y):
        return F.kl_div(input=F.log_softmax(y, dim=-1, dtype=torch.float32), target=F.log_softmax(x, dim=-1, dtype=torch.float32), log_target=True, reduction="mean")

    def _mmd(x, y):
        xx, yy, zz = torch.mm(x, x.t()), torch.mm(y, y.t()), torch.mm(x, y.t())
        rx = xx.diag().unsqueeze(0).expand_as(xx)
        ry = yy.diag().unsqueeze(0).expand_as(yy)
        dxx, dyy, dxy = rx.t() + rx - 2 * xx, ry.t() + ry - 2 * yy, rx.t() + ry - 2 * zz
        XX, YY, XY = (torch.zeros(xx.shape, dtype=torch.float32) for _ in range(3))
        for kb in MMD_BANDWIDTHS:
            XX += KERNELS[kernel](dxx, kb)
            YY += KERNELS[kernel](dyy, kb)
            XY += KERNELS[kernel](dxy, kb)
        return torch.mean(XX + YY - 2 * XY)

    if distance == "kl":
        d = _kl(x, y)
    elif distance == "kl-reverse":
        d = _kl(y, x)
    elif distance == "kl-sym":
        d = _kl(x, y) + _kl(y, x)
    elif distance == "mmd":
        d = _mmd(x, y)
    elif distance == "l2":
        d = (y - x).pow(2).sum(-1).sqrt().mean()
    else:
        raise ValueError(distance)
    return d / x.size(0)


DISTANCES: dict[str, Callable] = {
    "kl": kl,
    "kl-reverse": lambda t, c, r, b: kl(c, t, r, b),
    "kl-sym": lambda t, c, r, b: kl(t, c, r, b) + kl(c, t, r, b),
    "mmd": mmd,
    "l2": l2,
}

# ---------------------------------------------------------------------------------------------
# Trust regions: a target (no gradient unless asked) and a distance.


@dataclass
class Region:
    kind: str  # prev | pretrained | ema | noise
    distance: str = "kl"
    scale: float = 1.0
    reduction: str = "mean"
    temperature: float = 1.0
    decay: float = 0.999  # ema
    sigma: float = 1e-5  # noise
    uniform: bool = False  # noise: U(-sigma, sigma) instead of N(0, sigma^2)
    kernel: str = "imq2"  # mmd
    bandwidths: tuple = MMD_BANDWIDTHS  # mmd
    precision: str = "exact"  # TRAM radius: "exact" (float64 here) or "f32" (the reference code's delta)

    def measure(self, target: torch.Tensor, current: torch.Tensor, batch: int) -> torch.Tensor:
        tau = self.temperature
        args = (target / tau, current / tau, self.reduction, batch)
        d = mmd(*args, self.kernel, self.bandwidths) if self.distance == "mmd" else DISTANCES[self.distance](*args)
        return self.scale * tau * tau * d

    def radius(self, target: torch.Tensor, current: torch.Tensor, batch: int) -> float:
        """TRAM's delta: `measure`, or with precision f32 the reference code's float32 delta times
        its logit_scale (reference reduction only; the reference code has no other)."""
        if self.precision == "exact":
            return self.measure(target, current, batch).item()
        assert self.reduction == "reference" and self.temperature == 1.0 and self.bandwidths == MMD_BANDWIDTHS
        return (official_delta_f32(target, current, self.distance, self.kernel) * torch.tensor(self.scale, dtype=torch.float32)).item()


class RegionState:
    """Parameter history of a region: a frozen model copy (as the reference code keeps)."""

    def __init__(self, region: Region, model: Classifier):
        self.region = region
        self.copy = copy.deepcopy(model) if region.kind in ("prev", "pretrained", "ema") else None
        if self.copy is not None:
            self.copy.requires_grad_(False)

    def target(self, model: Classifier, ids: torch.Tensor, z: Optional[torch.Tensor], grad: bool) -> torch.Tensor:
        if self.region.kind == "noise":
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                return model.forward_embeds(model.emb(ids) + z)
        with torch.no_grad():
            return self.copy(ids)

    @torch.no_grad()
    def before_update(self, model: Classifier):
        if self.region.kind == "prev":  # theta_{t-1}: the parameters just before the base update
            self.copy.load_state_dict(model.state_dict())

    @torch.no_grad()
    def after_update(self, model: Classifier):
        if self.region.kind == "ema":
            d = self.region.decay
            for pe, p in zip(self.copy.parameters(), model.parameters()):
                pe.mul_(d).add_(p, alpha=1 - d)


@dataclass
class Penalty:
    region: Region
    lam: float = 1.0
    through_target: bool = False


# ---------------------------------------------------------------------------------------------
# Neighborhoods, SAM style: first_step perturbs in place and remembers theta, second_step
# restores theta exactly (the base optimizer then steps with the perturbed-point gradient).


@dataclass
class Ball:
    rho: float = 0.05
    adaptive: bool = False
    eta: float = 0.0
    weights_only: bool = False
    ascent: str = "paper"  # or "reference": e = T^2 * scale, no gradient factor


@dataclass
class Fisher:
    rho: float = 0.1
    eta: float = 1.0


class SAM(torch.optim.Optimizer):
    """SAM (Foret et al.) / ASAM (Kwon et al.) / TRAM ascent over the ball."""

    def __init__(self, params, ball: Ball):
        super().__init__(params, dict(adaptive=ball.adaptive, eta=ball.eta))
        self.ball = ball

    def _t(self, p):
        if not self.ball.adaptive or (self.ball.weights_only and p.dim() < 2):
            return None
        return p.abs() + self.ball.eta

    @torch.no_grad()
    def first_step(self, radius: float, unguarded: bool = False) -> bool:
        """`unguarded`: perturb with a finite radius <= 0 too (TRAM's reference code has no guard)."""
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms = [(p.grad if self._t(p) is None else self._t(p) * p.grad).norm(p=2) for p in params]
        grad_norm = torch.norm(torch.stack(norms), p=2)
        if not (math.isfinite(radius) and (radius > 0 or unguarded) and torch.isfinite(grad_norm) and grad_norm > 0):
            return False
        scale = radius / (grad_norm + 1e-12)
        for p in params:
            t = self._t(p)
            if self.ball.ascent == "paper":
                e_w = p.grad * scale if t is None else t.pow(2) * p.grad * scale
            else:
                e_w = torch.ones_like(p) * scale if t is None else t.pow(2) * scale
            self.state[p]["old_p"] = p.data.clone()
            p.add_(e_w)
        return True

    @torch.no_grad()
    def second_step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if "old_p" in self.state[p]:
                    p.data = self.state[p].pop("old_p")


class FSAM(torch.optim.Optimizer):
    """Fisher SAM (Kim et al.) with the diagonal Fisher F = 1 + eta g^2."""

    def __init__(self, params, fisher: Fisher):
        super().__init__(params, dict(rho=fisher.rho, eta=fisher.eta))
        self.fisher = fisher

    @torch.no_grad()
    def first_step(self, radius: float, unguarded: bool = False) -> bool:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        q = [p.grad / (1 + self.fisher.eta * p.grad.pow(2)) for p in params]
        denom = torch.sqrt(sum((p.grad * qi).sum() for p, qi in zip(params, q)))
        if not (math.isfinite(radius) and radius > 0 and torch.isfinite(denom) and denom > 0):
            return False
        for p, qi in zip(params, q):
            self.state[p]["old_p"] = p.data.clone()
            p.add_(qi * (radius / denom))
        return True

    second_step = SAM.second_step


# ---------------------------------------------------------------------------------------------
# Base optimizers and schedules.


@dataclass
class Base:
    kind: str  # sgd | adam | adamw
    opts: dict = field(default_factory=dict)

    def build(self, params, lr: float) -> torch.optim.Optimizer:
        if self.kind == "sgd":
            o = dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0) | self.opts
            return torch.optim.SGD(params, lr=lr, **o)
        o = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0 if self.kind == "adam" else 0.01) | self.opts
        return (torch.optim.Adam if self.kind == "adam" else torch.optim.AdamW)(params, lr=lr, foreach=False, **o)


def lr_lambda(schedule: dict) -> Callable[[int], float]:
    kind = schedule.get("kind", "constant")
    if kind == "constant":
        return lambda t: 1.0
    if kind == "polynomial":
        # transformers.get_polynomial_decay_schedule_with_warmup, lr_end = 0.
        warmup, total, power = schedule["warmup"], schedule["total"], schedule.get("power", 1.0)

        def f(t):
            if t < warmup:
                return float(t) / float(max(1, warmup))
            if t > total:
                return 0.0
            pct_remaining = 1 - (t - warmup) / (total - warmup)
            return pct_remaining**power

        return f
    if kind == "cosine":
        total = schedule["total"]
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# A method as the SPEC describes it, and one case.


@dataclass
class Method:
    base: Base
    penalties: list = field(default_factory=list)
    region: Optional[Region] = None  # sizes the ball (TRAM) or noises the first pass (TRAM-Fisher)
    neighborhood: object = None  # Ball | Fisher | None
    max_grad_norm: Optional[float] = None
    schedule: dict = field(default_factory=lambda: {"kind": "constant"})
    equal_weights: bool = False  # ablation only: average micro-batches without row weights
    shared_noise: bool = False  # ablation only: one sample per micro-batch for every noise user (the first one's sigma)


@dataclass
class Case:
    name: str
    composition: str  # Rust composition string or alias: what the fixture tests
    lr: float
    config: dict  # OptimizerConfig fields besides name / lr (component tables at top level)
    py: Method  # the same method, as this script implements it
    accumulation: int = 1
    micro_sizes: Optional[tuple] = None  # examples per micro-batch; default: BATCH split evenly
    layers: int = 1
    ablations: tuple = ()  # names of simpler methods (see ABLATIONS) it must differ from
    delta_ablations: tuple = ()  # ablations compared on the per-step radius instead of the weights
    steps: int = STEPS
    note: str = ""


def run(case: Case, method: Method):
    """Train STEPS steps; returns (init, final, batches, noise) with noise in draw order."""
    torch.manual_seed(SEED)
    model = Classifier(case.layers)  # default init in float32, then exact upcast
    model.to(DTYPE)
    init = {k: v.detach().to(torch.float32).clone() for k, v in model.named_parameters()}

    data = torch.Generator().manual_seed(SEED + 1)
    sizes = case.micro_sizes or (BATCH // case.accumulation,) * case.accumulation
    assert len(sizes) == case.accumulation
    weights = [1 / len(sizes) if method.equal_weights else n / sum(sizes) for n in sizes]  # rows_i / N
    batches = [
        [(torch.randint(0, VOCAB, (n, SEQ), generator=data), torch.randint(0, CLASSES, (n,), generator=data)) for n in sizes]
        for _ in range(case.steps)
    ]
    noise_gen = torch.Generator().manual_seed(SEED + 2)
    drawn: list[torch.Tensor] = []
    deltas: list[float] = []  # per step, the radius used
    exact: list[float] = []  # per step, the float64 radius (same as deltas unless precision f32)

    base = method.base.build(model.parameters(), case.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(base, lr_lambda(method.schedule))
    nb = method.neighborhood
    ascent = SAM(model.parameters(), nb) if isinstance(nb, Ball) else FSAM(model.parameters(), nb) if isinstance(nb, Fisher) else None
    pens = [(p, RegionState(p.region, model)) for p in method.penalties]
    region = RegionState(method.region, model) if method.region is not None else None
    sizing = region is not None and isinstance(nb, Ball)  # TRAM: delta sizes the ball
    noising = region is not None and isinstance(nb, Fisher)  # TRAM-Fisher: noised first pass

    for step in range(case.steps):
        # Per micro-batch, one sample per distribution (uniform or normal, sigma): two noise users
        # of different sigma never share a sample; users of the same distribution do.
        noise: list[dict] = [{} for _ in range(case.accumulation)]
        cache: dict = {}

        def z(i, r: Region):  # drawn on first use in this step, reused by every later pass
            key = "shared" if method.shared_noise else (r.uniform, r.sigma)
            if key not in noise[i]:
                shape = (sizes[i], SEQ, EMBED)
                u = (torch.rand(shape, generator=noise_gen, dtype=torch.float32) * 2 - 1) if r.uniform else torch.randn(shape, generator=noise_gen, dtype=torch.float32)
                zi = u * torch.tensor(r.sigma, dtype=torch.float32)
                drawn.append(zi.clone())
                noise[i][key] = zi.to(DTYPE)
            return noise[i][key]

        def pass_(first: bool) -> float:
            base.zero_grad(set_to_none=True)
            delta = 0.0
            for i, (ids, y) in enumerate(batches[step]):
                e = model.emb(ids)
                if first and noising:
                    e = e + z(i, region.region)
                logits = model.forward_embeds(e)
                loss = F.cross_entropy(logits, y)
                for j, (pen, st) in enumerate(pens):
                    if pen.region.kind == "noise":  # tracks theta: recomputed at theta + eps, same z
                        target = st.target(model, ids, z(i, pen.region), grad=pen.through_target)
                    else:  # parameter-history target: computed once per step
                        if (i, j) not in cache:
                            cache[(i, j)] = st.target(model, ids, None, grad=False)
                        target = cache[(i, j)]
                    if not pen.through_target:
                        target = target.detach()
                    loss = loss + pen.lam * pen.region.measure(target, logits, ids.shape[0])
                if first and sizing:
                    with torch.no_grad():
                        t = region.target(model, ids, z(i, region.region) if region.region.kind == "noise" else None, grad=False)
                        delta += region.region.radius(t, logits.detach(), ids.shape[0]) * weights[i]
                        exact[-1] += region.region.measure(t, logits.detach(), ids.shape[0]).item() * weights[i]
                (loss * weights[i]).backward()
            return delta

        exact.append(0.0)
        delta = pass_(True)
        deltas.append(delta)
        if ascent is not None:
            radius = delta if sizing else nb.rho
            # Reference mode: no guard for delta <= 0, as in the reference code.
            if ascent.first_step(radius, unguarded=sizing and method.region.reduction == "reference"):
                pass_(False)
                ascent.second_step()
        if method.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), method.max_grad_norm)
        for st in [s for _, s in pens] + ([region] if region else []):
            st.before_update(model)
        base.step()
        sched.step()
        for st in [s for _, s in pens] + ([region] if region else []):
            st.after_update(model)

    final = {k: v.detach().clone() for k, v in model.named_parameters()}
    run.deltas, run.exact = (deltas, exact) if sizing else ([], [])
    return init, final, batches, drawn


# Simpler methods a case must differ from (so the fixture detects a dropped feature).
ABLATIONS: dict[str, Callable[[Method], Method]] = {
    "base": lambda m: Method(m.base, schedule=m.schedule, max_grad_norm=m.max_grad_norm),
    "no-penalty": lambda m: replace(m, penalties=[]),
    "no-ascent": lambda m: replace(m, neighborhood=None, region=None),
    "no-clip": lambda m: replace(m, max_grad_norm=None),
    "constant-lr": lambda m: replace(m, schedule={"kind": "constant"}),
    "plain-sgd": lambda m: replace(m, base=Base("sgd")),
    "adam-no-decay": lambda m: replace(m, base=Base("adam")),
    "kl": lambda m: replace(m, region=replace(m.region, distance="kl")),
    "imq2": lambda m: replace(m, region=replace(m.region, kernel="imq2")),  # the former Rust `imq`
    "imq-three-halves": lambda m: replace(m, region=replace(m.region, kernel="imq-three-halves")),  # the former Rust `imq3`
    "gaussian": lambda m: replace(m, region=replace(m.region, kernel="gaussian")),  # the former Rust `rbf`
    "l2-row-sum": lambda m: replace(m, region=replace(m.region, reduction="reference-row-sum")),  # the former Rust reading
    "exact-delta": lambda m: replace(m, region=replace(m.region, precision="exact")),
    # With a negative logit_scale every delta is < 0: a guard (no ascent for delta <= 0) leaves the base step.
    "guarded": lambda m: replace(m, neighborhood=None, region=None),
    "mean-reduction": lambda m: replace(m, region=replace(m.region, reduction="mean")),
    "paper-ascent": lambda m: replace(m, neighborhood=replace(m.neighborhood, ascent="paper")),
    "tau1": lambda m: replace(m, penalties=[replace(p, region=replace(p.region, temperature=1.0)) for p in m.penalties]),
    "detached-target": lambda m: replace(m, penalties=[replace(p, through_target=False) for p in m.penalties]),
    "all-params-T": lambda m: replace(m, neighborhood=replace(m.neighborhood, weights_only=False)),
    "eta0": lambda m: replace(m, neighborhood=replace(m.neighborhood, eta=0.0)),
    "clean-first-pass": lambda m: replace(m, region=None),  # FSAM instead of TRAM-Fisher
    "equal-weights": lambda m: replace(m, equal_weights=True),
    "plain-ball": lambda m: replace(m, neighborhood=replace(m.neighborhood, adaptive=False)),
    # Every noise user handed the first one's sample (the engine before noise was keyed by sigma).
    "shared-noise": lambda m: replace(m, shared_noise=True),
}

# ---------------------------------------------------------------------------------------------
# The cases.

SGD, ADAM, ADAMW = Base("sgd"), Base("adam"), Base("adamw")


def noise(**kw):
    return Region("noise", **kw)


def tram_ball(**kw):  # the ball a trust region sizes: adaptive, eta = 0, every parameter
    return Ball(rho=float("nan"), adaptive=True, **kw)


R3F = dict(distance="kl-sym", uniform=True)

CASES = [
    # Base optimizers.
    Case("sgd", "sgd", 0.05, {}, Method(SGD)),
    Case("sgd-nesterov-wd", "sgd", 0.05, {"sgd": {"nesterov": True, "weight_decay": 0.05}}, Method(Base("sgd", dict(nesterov=True, weight_decay=0.05))), ablations=("plain-sgd",)),
    Case("sgd-dampening", "sgd(momentum=0.5,dampening=0.3)", 0.05, {}, Method(Base("sgd", dict(momentum=0.5, dampening=0.3))), ablations=("plain-sgd",)),
    Case("adam", "adam", 0.01, {}, Method(ADAM)),
    Case("adam-l2", "adam", 0.01, {"adam": {"weight_decay": 0.1, "beta2": 0.99}}, Method(Base("adam", dict(weight_decay=0.1, betas=(0.9, 0.99)))), ablations=("adam-no-decay",)),
    Case("adamw", "adamw", 0.05, {}, Method(ADAMW), ablations=("adam-no-decay",), note="default weight decay 0.01"),
    Case("adamw-wd", "adamw", 0.01, {"adamw": {"weight_decay": 0.2}}, Method(Base("adamw", dict(weight_decay=0.2))), ablations=("adam-no-decay",)),
    # Schedules, clipping, accumulation.
    Case("adam-polynomial-warmup", "adam", 0.01, {"schedule": {"kind": "polynomial", "warmup": 2, "total": 6, "power": 1.0}},
         Method(ADAM, schedule={"kind": "polynomial", "warmup": 2, "total": 6, "power": 1.0}), ablations=("constant-lr",)),
    Case("sgd-cosine", "sgd", 0.05, {"schedule": {"kind": "cosine", "total": 5}}, Method(SGD, schedule={"kind": "cosine", "total": 5}), ablations=("constant-lr",)),
    Case("sgd-clip", "sgd", 0.05, {"max_grad_norm": 0.1}, Method(SGD, max_grad_norm=0.1), ablations=("no-clip",)),
    Case("sgd-accum2", "sgd", 0.05, {}, Method(SGD), accumulation=2),
    Case("adam-accum-unequal", "adam", 0.01, {}, Method(ADAM), accumulation=2, micro_sizes=(4, 2), ablations=("equal-weights",)),
    # Fixed-radius neighborhoods.
    Case("sam-sgd", "sam+sgd", 0.05, {}, Method(SGD, neighborhood=Ball(rho=0.05)), ablations=("base",), note="SAM, default rho 0.05"),
    Case("sam-adam", "sam", 0.01, {"ball": {"rho": 0.1}}, Method(ADAM, neighborhood=Ball(rho=0.1)), ablations=("base",)),
    Case("sam-sgd-clip", "sam+sgd", 0.05, {"max_grad_norm": 0.1, "ball": {"rho": 0.1}}, Method(SGD, neighborhood=Ball(rho=0.1), max_grad_norm=0.1), ablations=("no-clip", "no-ascent")),
    Case("sam-ascent-reference", "ball(rho=0.01,ascent=reference)+sgd", 0.05, {}, Method(SGD, neighborhood=Ball(rho=0.01, ascent="reference")), ablations=("paper-ascent", "base")),
    Case("asam", "asam", 0.01, {"ball": {"rho": 0.5}}, Method(ADAM, neighborhood=Ball(rho=0.5, adaptive=True)), ablations=("base", "plain-ball")),
    Case("asam-default-rho-sgd", "asam+sgd", 0.05, {}, Method(SGD, neighborhood=Ball(rho=2.0, adaptive=True)), ablations=("base",), note="ASAM eta=0, default rho 2.0"),
    Case("asam-code", "ball(adaptive=true,eta=0.1,weights_only=true)+sgd", 0.05, {}, Method(SGD, neighborhood=Ball(rho=0.5, adaptive=True, eta=0.1, weights_only=True)),
         ablations=("base", "all-params-T", "eta0"), note="ASAM authors' code style: eta > 0, T on weight matrices only, default rho 0.5"),
    Case("fsam", "fsam", 0.01, {}, Method(ADAM, neighborhood=Fisher()), ablations=("base",)),
    Case("fsam-sgd", "fisher(rho=0.2,eta=5)+sgd", 0.05, {}, Method(SGD, neighborhood=Fisher(rho=0.2, eta=5.0)), ablations=("base",)),
    # One-pass trust-region penalties.
    Case("trpo", "trpo", 0.05, {"reg:prev": {"lambda": 5.0}}, Method(ADAM, penalties=[Penalty(Region("prev"), lam=5.0)]), ablations=("base",)),
    Case("trpo-sgd", "trpo+sgd", 0.1, {"prev": {"scale": 4.0}}, Method(SGD, penalties=[Penalty(Region("prev", scale=4.0))]), ablations=("base",)),
    Case("r3f", "r3f", 0.01, {"noise": {"sigma": 0.3}, "reg:noise": {"lambda": 3.0}}, Method(ADAM, penalties=[Penalty(noise(sigma=0.3, **R3F), lam=3.0, through_target=True)]),
         ablations=("base", "detached-target")),
    Case("mesa", "mesa", 0.01, {"ema": {"decay": 0.5}}, Method(ADAM, penalties=[Penalty(Region("ema", decay=0.5))]), ablations=("base",)),
    Case("mesa-code", "reg:ema(temperature=5,lambda=0.8)+adam", 0.05, {"ema": {"decay": 0.9}},
         Method(ADAM, penalties=[Penalty(Region("ema", decay=0.9, temperature=5.0), lam=0.8)]), ablations=("base", "tau1"), note="MESA code settings tau 5, lambda 0.8"),
    Case("penalty-noise-kl", "reg:noise(sigma=0.1,scale=3)+sgd", 0.05, {}, Method(SGD, penalties=[Penalty(noise(sigma=0.1, scale=3.0))]), ablations=("base",)),
    Case("penalty-pretrained-l2", "reg:pretrained(distance=l2,lambda=0.5)+adam", 0.01, {}, Method(ADAM, penalties=[Penalty(Region("pretrained", distance="l2"), lam=0.5)]), ablations=("base",)),
    Case("penalty-pretrained-mmd", "reg:pretrained(distance=mmd,lambda=0.02)+sgd", 0.05, {}, Method(SGD, penalties=[Penalty(Region("pretrained", distance="mmd"), lam=0.02)]), ablations=("base",)),
    Case("penalty-prev-mmd-gaussian", "reg:prev(distance=mmd,lambda=0.5)+adam", 0.01, {"mmd": {"kernel": "gaussian", "bandwidths": [0.5, 1.0, 2.0]}},
         Method(ADAM, penalties=[Penalty(Region("prev", distance="mmd", kernel="gaussian", bandwidths=(0.5, 1.0, 2.0)), lam=0.5)]), ablations=("base",)),
    Case("penalty-two", "reg:prev(lambda=2)+reg:pretrained(distance=kl-reverse)+sgd", 0.1, {}, Method(SGD, penalties=[Penalty(Region("prev"), lam=2.0), Penalty(Region("pretrained", distance="kl-reverse"))]), ablations=("base",)),
    # Naive combinations: ASAM on the regularised loss.
    Case("asam-trpo", "asam+trpo", 0.05, {"ball": {"rho": 0.5}, "prev": {"lambda": 5.0}},
         Method(ADAM, penalties=[Penalty(Region("prev"), lam=5.0)], neighborhood=Ball(rho=0.5, adaptive=True)), ablations=("base", "no-penalty", "no-ascent")),
    Case("asam-r3f", "asam+r3f", 0.01, {"ball": {"rho": 0.5}, "noise": {"sigma": 1.0}},
         Method(ADAM, penalties=[Penalty(noise(sigma=1.0, **R3F), through_target=True)], neighborhood=Ball(rho=0.5, adaptive=True)), ablations=("base", "no-penalty", "no-ascent")),
    Case("asam-r3f-accum2", "asam+r3f+sgd", 0.05, {"ball": {"rho": 0.5}, "noise": {"sigma": 1.0, "lambda": 3.0}},
         Method(SGD, penalties=[Penalty(noise(sigma=1.0, **R3F), lam=3.0, through_target=True)], neighborhood=Ball(rho=0.5, adaptive=True)), accumulation=2, ablations=("base", "no-penalty", "no-ascent")),
    Case("asam-mesa", "asam+mesa", 0.01, {"ball": {"rho": 0.5}, "ema": {"decay": 0.5, "lambda": 2.0}},
         Method(ADAM, penalties=[Penalty(Region("ema", decay=0.5), lam=2.0)], neighborhood=Ball(rho=0.5, adaptive=True)), ablations=("base", "no-penalty", "no-ascent")),
    # TRAM: a trust-region distance sizes the adaptive ball.
    Case("tram-prev", "tram-prev", 0.05, {"prev": {"scale": 50.0}}, Method(ADAM, region=Region("prev", scale=50.0), neighborhood=tram_ball()), ablations=("base",)),
    Case("tram-prev-sgd", "tram-prev+sgd", 0.1, {"prev": {"scale": 50.0}}, Method(SGD, region=Region("prev", scale=50.0), neighborhood=tram_ball()), ablations=("base",)),
    Case("tram-pretrained", "tram-pretrained", 0.05, {"pretrained": {"scale": 50.0}}, Method(ADAM, region=Region("pretrained", scale=50.0), neighborhood=tram_ball()), ablations=("base",)),
    Case("tram-ema", "ema(decay=0.5,scale=50)+ball+adam", 0.05, {}, Method(ADAM, region=Region("ema", decay=0.5, scale=50.0), neighborhood=tram_ball()), ablations=("base",)),
    Case("tram-noise", "tram-noise", 0.01, {"noise": {"sigma": 1.0, "scale": 20.0}}, Method(ADAM, region=noise(sigma=1.0, scale=20.0), neighborhood=tram_ball()), ablations=("base", "plain-ball")),
    Case("tram-noise-sgd", "tram-noise+sgd", 0.05, {"noise": {"sigma": 1.0, "scale": 20.0}}, Method(SGD, region=noise(sigma=1.0, scale=20.0), neighborhood=tram_ball()), ablations=("base",)),
    Case("tram-noise-accum2", "tram-noise", 0.01, {"noise": {"sigma": 1.0, "scale": 20.0}}, Method(ADAM, region=noise(sigma=1.0, scale=20.0), neighborhood=tram_ball()),
         accumulation=2, ablations=("base",)),
    Case("tram-noise-accum-unequal", "noise(reduction=reference,scale=500)+ball+adam", 0.01, {"noise": {"sigma": 1.0}},
         Method(ADAM, region=noise(sigma=1.0, scale=500.0, reduction="reference"), neighborhood=tram_ball()), accumulation=3, micro_sizes=(3, 2, 1), ablations=("base", "mean-reduction", "equal-weights")),
    Case("asam-r3f-accum-unequal", "asam+r3f+adam", 0.01, {"ball": {"rho": 0.5}, "noise": {"sigma": 1.0}},
         Method(ADAM, penalties=[Penalty(noise(sigma=1.0, **R3F), through_target=True)], neighborhood=Ball(rho=0.5, adaptive=True)), accumulation=2, micro_sizes=(2, 4),
         ablations=("base", "no-penalty", "no-ascent", "equal-weights")),
    Case("tram-noise-clip-poly", "tram-noise+sgd", 0.1, {"noise": {"sigma": 1.0, "scale": 20.0}, "max_grad_norm": 0.2, "schedule": {"kind": "polynomial", "warmup": 1, "total": 5, "power": 2.0}},
         Method(SGD, region=noise(sigma=1.0, scale=20.0), neighborhood=tram_ball(), max_grad_norm=0.2, schedule={"kind": "polynomial", "warmup": 1, "total": 5, "power": 2.0}),
         ablations=("base", "no-clip", "constant-lr")),
    Case("tram-noise-layers2", "tram-noise", 0.01, {"noise": {"sigma": 1.0, "scale": 20.0}}, Method(ADAM, region=noise(sigma=1.0, scale=20.0), neighborhood=tram_ball()), layers=2, ablations=("base",)),
    Case("tram-noise-kl-reverse", "noise(distance=kl-reverse)+ball+adam", 0.01, {"noise": {"sigma": 5.0, "scale": 20.0}},
         Method(ADAM, region=noise(sigma=5.0, scale=20.0, distance="kl-reverse"), neighborhood=tram_ball()), ablations=("base", "kl")),
    Case("tram-noise-kl-sym", "noise(distance=kl-sym)+ball+adam", 0.01, {"noise": {"sigma": 5.0, "scale": 20.0}},
         Method(ADAM, region=noise(sigma=5.0, scale=20.0, distance="kl-sym"), neighborhood=tram_ball()), ablations=("base", "kl")),
    Case("tram-noise-mmd", "tram-noise-mmd", 0.01, {"noise": {"sigma": 0.1, "scale": 5.0}}, Method(ADAM, region=noise(sigma=0.1, scale=5.0, distance="mmd"), neighborhood=tram_ball()), ablations=("base", "kl")),
    Case("tram-noise-mmd-imq-three-halves", "tram-noise-mmd", 0.01, {"noise": {"sigma": 0.3}, "mmd": {"kernel": "imq-three-halves", "bandwidths": [0.5, 1.0, 2.0]}},
         Method(ADAM, region=noise(sigma=0.3, distance="mmd", kernel="imq-three-halves", bandwidths=(0.5, 1.0, 2.0)), neighborhood=tram_ball()), ablations=("base", "imq2")),
    # The reference code's kernels, each against the kernel that carried its name here before.
    Case("tram-noise-mmd-imq", "noise(distance=mmd)+ball+adam", 0.01, {"noise": {"sigma": 0.3, "scale": 5.0}, "mmd": {"kernel": "imq"}},
         Method(ADAM, region=noise(sigma=0.3, scale=5.0, distance="mmd", kernel="imq"), neighborhood=tram_ball()), ablations=("base", "imq2")),
    Case("tram-noise-mmd-imq3", "noise(distance=mmd)+ball+adam", 0.01, {"noise": {"sigma": 0.3, "scale": 5.0}, "mmd": {"kernel": "imq3"}},
         Method(ADAM, region=noise(sigma=0.3, scale=5.0, distance="mmd", kernel="imq3"), neighborhood=tram_ball()), ablations=("base", "imq-three-halves")),
    Case("tram-noise-mmd-rbf", "noise(distance=mmd)+ball+adam", 0.01, {"noise": {"sigma": 0.3, "scale": 5.0}, "mmd": {"kernel": "rbf"}},
         Method(ADAM, region=noise(sigma=0.3, scale=5.0, distance="mmd", kernel="rbf"), neighborhood=tram_ball()), ablations=("base", "gaussian")),
    Case("tram-noise-l2", "tram-noise-l2", 0.01, {"noise": {"sigma": 0.3}}, Method(ADAM, region=noise(sigma=0.3, distance="l2"), neighborhood=tram_ball()), ablations=("base", "kl")),
    Case("tram-noise-reference-reduction", "noise(reduction=reference)+ball+adam", 0.01, {"noise": {"sigma": 1.0, "scale": 500.0}},
         Method(ADAM, region=noise(sigma=1.0, scale=500.0, reduction="reference"), neighborhood=tram_ball()), ablations=("base", "mean-reduction")),
    Case("tram-noise-mmd-reference-reduction", "tram-noise-mmd", 0.01, {"noise": {"sigma": 0.1, "scale": 20.0, "reduction": "reference"}},
         Method(ADAM, region=noise(sigma=0.1, scale=20.0, distance="mmd", reduction="reference"), neighborhood=tram_ball()), ablations=("base", "mean-reduction")),
    Case("tram-noise-l2-reference-reduction", "noise(distance=l2,reduction=reference)+ball+adam", 0.01, {"noise": {"sigma": 0.3, "scale": 3.0}},
         Method(ADAM, region=noise(sigma=0.3, scale=3.0, distance="l2", reduction="reference"), neighborhood=tram_ball()), ablations=("base", "l2-row-sum"),
         note="reference L2 reduction: the per-row mean divided by the batch size (not the row sum over it)"),
    # Reference mode: the reference code's float32 delta at the paper's sigma = 1e-5 (rounding noise,
    # often <= 0, and perturbing anyway); 20 draws. The weights end within 1e-8 of plain Adam's, so
    # the contrast is taken on the radius: the float32 delta against the exact one.
    Case("tram-noise-reference-f32", "noise(reduction=reference,radius_precision=f32)+ball(ascent=reference)+adam", 0.01, {"noise": {"sigma": 1e-5}},
         Method(ADAM, region=noise(sigma=1e-5, reduction="reference", precision="f32"), neighborhood=tram_ball(ascent="reference")),
         delta_ablations=("exact-delta",), steps=20, note="reference code's float32 delta at sigma 1e-5; delta/<step> as used, delta_exact/<step> in float64"),
    Case("tram-noise-mmd-reference-f32", "noise(distance=mmd,reduction=reference,radius_precision=f32)+ball(ascent=reference)+adam", 0.001, {"noise": {"sigma": 1e-5}},
         Method(ADAM, region=noise(sigma=1e-5, distance="mmd", reduction="reference", precision="f32"), neighborhood=tram_ball(ascent="reference")),
         delta_ablations=("exact-delta",), steps=20, note="reference code's MMD (imq2) accumulated in float32 at sigma 1e-5; delta/<step> as used, delta_exact/<step> in float64; "
         "lr 1e-3 because its noise (~3e-7) already moves the weights by ~1e-6 relative at lr 1e-2"),
    # Reference mode: no guard for delta <= 0 (a negative logit_scale makes every delta negative).
    Case("tram-noise-reference-negative-delta", "noise(reduction=reference,scale=-500)+ball+sgd", 0.05, {"noise": {"sigma": 1.0}},
         Method(SGD, region=noise(sigma=1.0, scale=-500.0, reduction="reference"), neighborhood=tram_ball()), ablations=("guarded",),
         note="reference mode perturbs with delta <= 0 (here < 0 at every step), as the reference code does"),
    Case("tram-noise-ascent-reference", "noise+ball(ascent=reference)+adam", 0.01, {"noise": {"sigma": 0.3}},
         Method(ADAM, region=noise(sigma=0.3), neighborhood=tram_ball(ascent="reference")), ablations=("base", "paper-ascent")),
    # Two noise users of different sigma: each gets a sample of its own distribution per micro-batch
    # (the penalty's sigma = 0.05 sample is drawn first, then the radius region's sigma = 1).
    Case("tram-noise-two-sigmas", "reg:noise(sigma=0.05,lambda=2)+noise(sigma=1,scale=20)+ball+adam", 0.01, {},
         Method(ADAM, penalties=[Penalty(noise(sigma=0.05), lam=2.0)], region=noise(sigma=1.0, scale=20.0), neighborhood=tram_ball()), accumulation=2,
         ablations=("base", "no-penalty", "shared-noise"), note="two noise users of different sigma: one sample each per micro-batch"),
    Case("tram-fisher", "tram-fisher", 0.01, {"noise": {"sigma": 0.3}, "fisher": {"rho": 0.1}},
         Method(ADAM, region=noise(sigma=0.3), neighborhood=Fisher(rho=0.1)), ablations=("base", "clean-first-pass")),
    Case("tram-fisher-accum2", "tram-fisher+sgd", 0.05, {"noise": {"sigma": 0.3}, "fisher": {"rho": 0.2}},
         Method(SGD, region=noise(sigma=0.3), neighborhood=Fisher(rho=0.2)), accumulation=2, ablations=("base", "clean-first-pass")),
]

# ---------------------------------------------------------------------------------------------
# Writing fixtures.


def rel(a: dict, b: dict) -> float:
    """The largest per-tensor relative difference max|a-b| / max|b| (the Rust test's measure)."""
    return max(((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max()).item() for k in b)


def write_safetensors(path: str, tensors: dict, metadata: dict):
    """safetensors with a canonical (sorted) header, so identical inputs give identical bytes."""
    raw = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def generate(case: Case):
    init, final, batches, noise = run(case, case.py)
    deltas, exact = run.deltas, run.exact
    contrasts = {}
    for a in case.ablations:
        _, other, _, _ = run(case, ABLATIONS[a](case.py))
        contrasts[a] = rel(final, other)
    for a in case.delta_ablations:
        # The radius itself: max|delta - delta_other| / max|delta_other| over the steps.
        run(case, ABLATIONS[a](case.py))
        contrasts[f"{a} (delta)"] = rel({"delta": torch.tensor(deltas)}, {"delta": torch.tensor(run.deltas)})
    tensors = {f"init/{k}": v for k, v in init.items()}
    tensors |= {f"final/{k}": v for k, v in final.items()}
    for s, micro in enumerate(batches):
        for m, (ids, y) in enumerate(micro):
            tensors[f"batch/{s}/{m}/inputs"] = ids
            tensors[f"batch/{s}/{m}/targets"] = y
    for k, zk in enumerate(noise):
        tensors[f"noise/{k}"] = zk
    if case.delta_ablations:  # the radius of every step, as used and in float64
        for k, (d, e) in enumerate(zip(deltas, exact)):
            tensors[f"delta/{k}"] = torch.tensor([d], dtype=torch.float64)
            tensors[f"delta_exact/{k}"] = torch.tensor([e], dtype=torch.float64)
    config = {"lr": case.lr} | case.config
    metadata = {
        "composition": case.composition,
        "config": json.dumps(config, sort_keys=True),
        "steps": str(case.steps),
        "accumulation": str(case.accumulation),
        "layers": str(case.layers),
        "torch_version": torch.__version__,
        "generator": "tests/golden/generate.py",
        "note": case.note,
        "contrast": json.dumps({k: float(f"{v:.3g}") for k, v in contrasts.items()}, sort_keys=True),
    }
    write_safetensors(os.path.join(OUT, f"{case.name}.safetensors"), tensors, metadata)
    worst = min(contrasts.values(), default=math.inf)
    flag = "" if worst > MIN_CONTRAST else "   <-- NOT DISCRIMINATIVE"
    print(f"{case.name:40s} noise={len(noise):2d}  " + "  ".join(f"{k}={v:.2e}" for k, v in contrasts.items()) + flag)
    return worst > MIN_CONTRAST


def self_check():
    """Finite checks of this script's building blocks against the SPEC's closed forms."""
    g = torch.Generator().manual_seed(7)
    t, c = torch.randn(5, 4, generator=g, dtype=DTYPE), torch.randn(5, 4, generator=g, dtype=DTYPE)
    pt, pc = t.softmax(-1), c.softmax(-1)
    manual = (pt * (pt.log() - pc.log())).sum() / 5
    assert torch.allclose(kl(t, c, "mean", 5), manual) and torch.allclose(kl(t, c, "reference", 3), manual * 5 / 20 / 3)
    assert torch.allclose(DISTANCES["kl-sym"](t, c, "mean", 5), manual + (pc * (pc.log() - pt.log())).sum() / 5)
    k = lambda a, b: sum(1 / math.sqrt(bw * bw + float(((a - b) ** 2).sum())) for bw in MMD_BANDWIDTHS)
    mean_k = lambda a, b: sum(k(x, y) for x in a for y in b) / (len(a) * len(b))
    assert abs(mmd(t, c, "mean", 5).item() - (mean_k(t, t) + mean_k(c, c) - 2 * mean_k(t, c))) < 1e-12
    assert abs(l2(t, c, "mean", 5).item() - sum(float((a - b).norm()) for a, b in zip(t, c)) / 5) < 1e-9
    assert abs(l2(t, c, "reference", 3).item() - sum(float((a - b).norm()) for a, b in zip(t, c)) / 5 / 3) < 1e-9
    assert abs(l2(t, t + 1e-9, "mean", 5).item() / 2e-9 - 1) < 1e-6  # no epsilon under the root
    # The reference code's float32 delta agrees with the float64 formulas where rounding is small.
    closed = {"imq": lambda d, b: b / (b + d), "imq2": lambda d, b: (b * b + d) ** -0.5, "imq3": lambda d, b: b * b / (b * b + d), "rbf": lambda d, b: math.exp(-d / (2 * b))}
    for name, f in closed.items():
        assert abs(KERNELS[name](torch.tensor(3.0, dtype=DTYPE), 0.5).item() - f(3.0, 0.5)) < 1e-12, name
        exact = mmd(t, c, "reference", 5, kernel=name).item()
        assert abs(official_delta_f32(t, c, "mmd", name).item() - exact) < 1e-5 * max(1.0, abs(exact) * 5), name
    for name in ("kl", "kl-reverse", "kl-sym", "l2"):
        exact = DISTANCES[name](t, c, "reference", 5).item()
        assert abs(official_delta_f32(t, c, name, "imq2").item() / exact - 1) < 1e-5, name
    # Ascents: plain ball has norm rho; adaptive ball ||eps / T|| = r; Fisher eps^T F eps = rho^2.
    w = nn.Parameter(torch.randn(3, 4, generator=g, dtype=DTYPE))
    w.grad = torch.randn(3, 4, generator=g, dtype=DTYPE)
    theta = w.detach().clone()
    for ball, check in [(Ball(rho=0.3), lambda e: e.norm()), (Ball(rho=0.3, adaptive=True), lambda e: (e / theta.abs()).norm())]:
        opt = SAM([w], ball)
        assert opt.first_step(0.3)
        assert abs(check(w.detach() - theta).item() - 0.3) < 1e-9
        opt.second_step()
        assert torch.equal(w.detach(), theta)
    opt = FSAM([w], Fisher(rho=0.2, eta=2.0))
    assert opt.first_step(0.2)
    e = w.detach() - theta
    assert abs((e * (1 + 2.0 * w.grad**2) * e).sum().item() - 0.04) < 1e-9
    opt.second_step()
    assert not SAM([w], Ball()).first_step(0.0)
    # Schedules: HF polynomial warmup/decay and cosine.
    f = lr_lambda({"kind": "polynomial", "warmup": 10, "total": 50, "power": 1.0})
    assert [f(0), f(5), f(10), f(30), f(50)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    f = lr_lambda({"kind": "cosine", "total": 100})
    assert abs(f(50) - 0.5) < 1e-12 and abs(f(100)) < 1e-12


def main(argv):
    self_check()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names), "duplicate case names"
    wanted = argv[1:] or names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        sys.exit(f"unknown case(s): {unknown}; cases: {names}")
    ok = all([generate(c) for c in CASES if c.name in wanted])
    print(f"torch {torch.__version__}: wrote {len(wanted)} fixture(s) to {OUT}")
    if not ok:
        sys.exit(f"some fixtures are not discriminative (contrast <= {MIN_CONTRAST})")


if __name__ == "__main__":
    main(sys.argv)
