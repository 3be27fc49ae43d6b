"""The one Definitions object: `dagster dev` and `dagster asset materialize` load this."""
import dagster as dg

from recs_assets import analytics, features, models, orchestration, outputs, quality, release_asset
from recs_assets.ingest.assets import ingest
from recs_assets.resources import ArtifactStore, Embedder, Warehouse

FOLLOW = dg.AutomationCondition.eager()

all_assets = [
    ingest,
    features.interaction_matrix, features.baskets, features.popularity, features.covisitation,
    features.catalog_embeddings, features.item_similarity,
    models.frequent_itemsets, models.association_rules, models.als_factors, models.bpr_factors,
    *analytics.ASSETS,
    outputs.batch_topn.with_attributes(automation_condition=FOLLOW),
    *[a.with_attributes(automation_condition=FOLLOW) for a in
      (outputs.similar_items, outputs.vector_store, quality.evaluation, release_asset.release)],
]

resources = {"warehouse": Warehouse(), "artifacts": ArtifactStore(), "embedder": Embedder()}

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=quality.CHECKS,
    jobs=[orchestration.models_job, orchestration.topn_job, orchestration.publish_job],
    schedules=[orchestration.daily],
    sensors=[orchestration.inbox_sensor, orchestration.automation],
    resources=resources,
    executor=dg.in_process_executor,
)
