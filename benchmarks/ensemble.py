"""Batched ensemble vs. a Python loop over separate networks: train-step and inference throughput.

Design §1.2 requires the `E` members to be one batched network (weights `(E, in, out)`,
one batched matmul per layer). This measures what that buys over the obvious
alternative, `E` separate `nn.Sequential` MLPs of the same shape stepped in a Python
loop, both in the same process and interleaved repetition by repetition so that
machine noise hits both alike.

A train step is forward + backward + one Adam step over all parameters. The batched
side is `EnsembleDynamics.loss` with Poisson(1) bootstrap weights; the loop side gives
each member the same loss (bounded log-variance Gaussian NLL over Δobs and reward,
termination BCE, bootstrap-weighted mean) so the work per member matches.

    PYTHONPATH=. .venv/bin/python benchmarks/ensemble.py [--threads 1] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from umpo_dist.models.ensemble import EnsembleDynamics


class LoopEnsemble(nn.Module):
    """`E` separate Gaussian MLPs, each its own `nn.Sequential`, evaluated one after another."""

    def __init__(self, obs_dim: int, action_dim: int, members: int, hidden_layers: int, hidden_size: int):
        super().__init__()
        self.target_dim = obs_dim + 1
        sizes = [obs_dim + action_dim] + [hidden_size] * hidden_layers
        self.members = nn.ModuleList()
        for _ in range(members):
            layers: list[nn.Module] = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(a, b), nn.SiLU()]
            layers.append(nn.Linear(hidden_size, 2 * self.target_dim + 1))
            self.members.append(nn.Sequential(*layers))
        # Log-variance bounds shared by all members, as in `EnsembleDynamics`.
        self.max_logvar = nn.Parameter(torch.full((self.target_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((self.target_dim,), -10.0))

    def member_forward(self, e: int, x: torch.Tensor):
        mean, raw_logvar, term_logit = self.members[e](x).split([self.target_dim, self.target_dim, 1], -1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, term_logit.squeeze(-1)

    def forward(self, x: torch.Tensor):
        return [self.member_forward(e, x) for e in range(len(self.members))]

    def loss(self, x: torch.Tensor, y: torch.Tensor, terminated: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for e in range(len(self.members)):
            mean, logvar, term_logit = self.member_forward(e, x)
            nll = (((mean - y) ** 2) * torch.exp(-logvar) + logvar).sum(-1)
            bce = F.binary_cross_entropy_with_logits(term_logit, terminated, reduction="none")
            w = weights[:, e]
            total = total + (w * (nll + bce)).sum() / w.sum().clamp_min(1.0)
        return total + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())


def make_batch(obs_dim: int, action_dim: int, batch: int, members: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, obs_dim, generator=g)
    return {
        "obs": obs.to(device),
        "action": (torch.rand(batch, action_dim, generator=g) * 2 - 1).to(device),
        "next_obs": (obs + 0.1 * torch.randn(batch, obs_dim, generator=g)).to(device),
        "reward": torch.randn(batch, generator=g).to(device),
        "terminated": (torch.rand(batch, generator=g) < 0.05).float().to(device),
        "weights": torch.poisson(torch.ones(batch, members), generator=g).to(device),
    }


def timed(fn, iters: int, device: torch.device) -> float:
    """Calls per second of `fn` over `iters` calls."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iters / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (design §5: one per allotted CPU)")
    p.add_argument("--members", type=int, default=7)
    p.add_argument("--hidden-layers", type=int, default=4)
    p.add_argument("--hidden-size", type=int, default=200)
    p.add_argument("--batch", type=int, default=256, help="samples per member")
    p.add_argument("--obs-dim", type=int, default=17, help="HalfCheetah-v5 size")
    p.add_argument("--action-dim", type=int, default=6, help="HalfCheetah-v5 size")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations of each variant first")
    p.add_argument("--iters", type=int, default=40, help="train steps per timed repetition")
    p.add_argument("--infer-iters", type=int, default=100, help="forward passes per timed repetition")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (variants interleaved)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    E = args.members

    batched = EnsembleDynamics(args.obs_dim, args.action_dim, E, args.hidden_layers, args.hidden_size).to(device)
    loop = LoopEnsemble(args.obs_dim, args.action_dim, E, args.hidden_layers, args.hidden_size).to(device)
    n_batched = sum(p.numel() for p in batched.parameters())
    n_loop = sum(p.numel() for p in loop.parameters())
    opt_b = torch.optim.Adam(batched.parameters(), lr=1e-3, weight_decay=1e-5)
    opt_l = torch.optim.Adam(loop.parameters(), lr=1e-3, weight_decay=1e-5)

    batch = make_batch(args.obs_dim, args.action_dim, args.batch, E, device)
    batched.input_norm.update(torch.cat([batch["obs"], batch["action"]], -1))
    batched.target_norm.update(batched.targets(batch))

    def normalized():
        # The loop side normalises inputs and targets with the same statistics, every step, as `loss` does.
        x = batched.input_norm.normalize(torch.cat([batch["obs"], batch["action"]], -1))
        return x, batched.target_norm.normalize(batched.targets(batch))

    def train_batched():
        loss, _ = batched.loss(batch, batch["weights"])
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()

    def train_loop():
        x, y = normalized()
        loss = loop.loss(x, y, batch["terminated"], batch["weights"])
        opt_l.zero_grad(set_to_none=True)
        loss.backward()
        opt_l.step()

    @torch.no_grad()
    def infer_batched():
        batched(batch["obs"], batch["action"])

    @torch.no_grad()
    def infer_loop():
        loop(normalized()[0])

    for fn in (train_batched, train_loop, infer_batched, infer_loop):
        for _ in range(args.warmup):
            fn()

    rates: dict[str, list[float]] = {k: [] for k in ("train_batched", "train_loop", "infer_batched", "infer_loop")}
    ratios: dict[str, list[float]] = {"train": [], "infer": []}
    wall = time.perf_counter()
    for _ in range(args.reps):
        tb, tl = timed(train_batched, args.iters, device), timed(train_loop, args.iters, device)
        ib, il = timed(infer_batched, args.infer_iters, device), timed(infer_loop, args.infer_iters, device)
        for k, v in zip(rates, (tb, tl, ib, il)):
            rates[k].append(v)
        ratios["train"].append(tb / tl)
        ratios["infer"].append(ib / il)
    wall = time.perf_counter() - wall

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"ensemble: E={E}, {args.hidden_layers}x{args.hidden_size} SiLU, obs_dim={args.obs_dim}, "
        f"action_dim={args.action_dim}, batch {args.batch}/member, device={device}, torch threads={torch.get_num_threads()}, "
        f"torch {torch.__version__}"
    )
    print(f"parameters: batched {n_batched:,}, loop {n_loop:,}; {args.reps} reps (median shown, [min-max]), {wall:.1f} s timed")
    print()
    header = f"{'':<26}{'batched /s':>20}{'loop /s':>20}{'batched/loop':>22}"
    print(header)
    print("-" * len(header))
    for label, kind in (("train step (fwd+bwd+Adam)", "train"), ("inference (forward)", "infer")):
        b, l, r = rates[f"{kind}_batched"], rates[f"{kind}_loop"], ratios[kind]
        print(
            f"{label:<26}{med[f'{kind}_batched']:>9.1f} [{min(b):.0f}-{max(b):.0f}]"
            f"{med[f'{kind}_loop']:>9.1f} [{min(l):.0f}-{max(l):.0f}]"
            f"{statistics.median(r):>11.2f}x [{min(r):.2f}-{max(r):.2f}]"
        )
    print()
    print(
        f"per train step: batched {1e3 / med['train_batched']:.1f} ms, loop {1e3 / med['train_loop']:.1f} ms; "
        f"per forward: batched {1e3 / med['infer_batched']:.2f} ms, loop {1e3 / med['infer_loop']:.2f} ms"
    )


if __name__ == "__main__":
    main()
