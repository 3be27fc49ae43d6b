"""The blend's source catalogue: each name means one matrix or vector everywhere (batch
top-N, request-time scoring, evaluation, the release contract). Kept apart from the numba
kernels so that reading a release contract does not compile anything."""

SOURCES = ("als", "bpr", "item_sim", "covis", "rules", "content", "trending", "popularity")
FACTOR_SOURCES = ("als", "bpr", "content")
NEIGHBOUR_SOURCES = ("item_sim", "covis", "rules")
VECTOR_SOURCES = ("trending", "popularity")
