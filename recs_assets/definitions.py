"""The one Definitions object: `dagster dev` and `dagster asset materialize` load this."""
from __future__ import annotations

import dagster as dg

from recs_assets.ingest.assets import ingest
from recs_assets.resources import ArtifactStore, Warehouse

all_assets = [ingest]

defs = dg.Definitions(
    assets=all_assets,
    resources={
        "warehouse": Warehouse(),
        "artifacts": ArtifactStore(),
    },
    # Chained steps in one process: a process per step costs ~2 s each here, more than most
    # of our steps take; the sharded top-N job opts into the multiprocess executor instead.
    executor=dg.in_process_executor,
)
