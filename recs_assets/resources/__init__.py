from recs_assets.resources.artifacts import ArtifactStore
from recs_assets.resources.warehouse import Warehouse, WarehouseLockedError

__all__ = ["ArtifactStore", "Warehouse", "WarehouseLockedError"]
