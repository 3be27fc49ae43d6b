from recs_assets.resources.artifacts import ArtifactStore
from recs_assets.resources.embedder import Embedder
from recs_assets.resources.warehouse import DiskFullError, Warehouse, WarehouseLockedError

__all__ = ["ArtifactStore", "Embedder", "Warehouse", "WarehouseLockedError", "DiskFullError"]
