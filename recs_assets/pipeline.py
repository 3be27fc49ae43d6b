"""Materialize the whole graph in order: models, then every top-N shard, then publish.

The README's main command and the end-to-end tests use this; in the UI the same order comes
from the jobs plus declarative automation.
"""
import argparse
import sys
import time

import dagster as dg

from recs_assets import definitions, orchestration, outputs, quality


def _ops(selection: dg.AssetSelection) -> set[str]:
    graph = definitions.defs.resolve_asset_graph()
    keys = selection.resolve(graph)
    return {graph.get(k).assets_def.op.name for k in keys}


def _config_for(run_config: dict | None, selection) -> dict | None:
    if not run_config:
        return None
    names = _ops(selection)
    ops = {k: v for k, v in run_config.get("ops", {}).items() if k in names}
    return {**{k: v for k, v in run_config.items() if k != "ops"}, "ops": ops} if ops else None


def materialize_all(instance: dg.DagsterInstance | None = None, *, run_config: dict | None = None,
                    resources: dict | None = None, log=print) -> dict[str, object]:
    resources = resources or definitions.resources
    results: dict[str, object] = {}
    common = dict(assets=[*definitions.all_assets, *quality.CHECKS], instance=instance, resources=resources, raise_on_error=False)

    def stage(name, selection, **kw):
        t0 = time.perf_counter()
        result = dg.materialize(selection=selection, run_config=_config_for(run_config, selection), **common, **kw)
        log(f"[recs] {name}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - t0:.1f}s")
        results[name] = result
        if not result.success:
            raise RuntimeError(f"stage {name} failed (run {result.run_id}); see the Dagster UI or logs")
        return result

    stage("models", orchestration.MODELS)
    # One run per shard, one after the other: each shard's kernels already use every core of
    # this machine, and runs in parallel here would contend for the sqlite run storage. Across
    # workers, launch the recs_topn_shards backfill instead (see README).
    for key in outputs.shards.get_partition_keys():
        stage(f"topn shard {key}", orchestration.SHARDS, partition_key=key)
    stage("publish", orchestration.PUBLISH)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Materialize every asset of recs, in order")
    parser.add_argument("--config", help="Dagster run config (YAML or JSON) with ops.<asset>.config entries")
    args = parser.parse_args(argv)
    run_config = None
    if args.config:
        import yaml

        with open(args.config) as f:
            run_config = yaml.safe_load(f)
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        try:
            materialize_all(instance, run_config=run_config)
        except RuntimeError as exc:
            print(f"[recs] {exc}", file=sys.stderr)
            return 1
    print(f"[recs] all assets materialized in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
