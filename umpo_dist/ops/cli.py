"""`umpo`: train, resume, evaluate and submit runs."""

from __future__ import annotations

import argparse
import logging
import sys

from umpo_dist.ops.checkpoint import CheckpointError
from umpo_dist.config import ConfigError
from umpo_dist.ops.tracking import TrackingError


def _print_summary(summary: dict) -> None:
    print("\n== umpo-dist run summary ==")
    print(f"run id        {summary['run_id']}  (MLflow: {summary['tracking_uri']})")
    print(f"env steps     {summary['env_steps']}")
    print(f"updates       model {summary['model_updates']}, policy {summary['policy_updates']} "
          f"(achieved ratios {summary['model_ratio']:.2f} / {summary['policy_ratio']:.2f} per env step)")
    print("evaluation    " + ", ".join(f"{s}: {r:.1f}" for s, r in summary["evaluations"]))
    print(f"final return  {summary['final_return']:.1f}   best {summary['best_return']:.1f}")
    if summary.get("policy_versions_used") is not None:
        print(f"workers acted with {summary['policy_versions_used']} policy versions; devices {summary.get('devices')}")
    print(f"wall-clock    {summary['wall_s']:.0f} s")
    step, ret = summary["policy_evaluation"]
    print(f"policy        {summary['policy_file']}  (scored {ret:.1f} at step {step}; umpo evaluate {summary['policy_file']})")
    print(f"MLflow model  runs:/{summary['run_id']}/policy  (mlflow.pyfunc.load_model)")
    print(f"checkpoint    {summary['checkpoint']}")


def cmd_train(args) -> int:
    from umpo_dist import config
    from umpo_dist.ops.train import train

    from umpo_dist.ops.tracking import tracking_uri

    cfg = config.load(args.config, args.set) if args.config else None
    uri = tracking_uri()
    ui = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    print(f"[umpo] MLflow: {ui}", file=sys.stderr, flush=True)
    summary = train(cfg, address=args.address, resume=args.resume, overrides=args.set, progress=not args.no_progress)
    _print_summary(summary)
    return 0


def cmd_evaluate(args) -> int:
    from umpo_dist.envs.evaluation import evaluate_policy
    from umpo_dist.ops.artifacts import load_policy

    policy = load_policy(args.checkpoint)
    result = evaluate_policy(policy, policy.env_id, args.episodes, args.seed)
    print(f"{policy.env_id}: return {result['return_mean']:.1f} ± {result['return_std']:.1f} over {args.episodes} episodes "
          f"(mean length {result['length_mean']:.0f})")
    return 0


def cmd_submit(args) -> int:
    from umpo_dist.ops.submit import submit

    return submit(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="umpo", description="Distributed uncertainty-aware model-based policy optimisation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (local Ray by default; --address joins a cluster)")
    p.add_argument("config", nargs="?", help="YAML config, e.g. configs/inverted_pendulum.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.ensemble_size=5 (repeatable)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue a run (MLflow run id or run directory)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="run a saved policy (policy.pt, checkpoint or run directory)")
    p.add_argument("checkpoint")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("submit", help="submit `umpo train` to a Ray cluster through the Jobs API")
    p.add_argument("config", help="YAML config, relative to the working directory that is shipped")
    p.add_argument("--address", default=None, help="Ray dashboard address, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--working-dir", default=".", help="directory shipped to the cluster (default: .)")
    p.add_argument("--installed", action="store_true",
                   help="use the umpo installed in the cluster's image instead of shipping the working directory")
    p.add_argument("--wait", action="store_true", help="follow the job's logs until it ends; exit with its status")
    p.set_defaults(func=cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, TrackingError) as exc:
        print(f"umpo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
