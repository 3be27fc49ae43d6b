"""Retail analytics assets: substitutes, customer saturation, cross-sell potential and
targeting lists, the product graph, factor exports (see README, "Retail analytics")."""
from recs_assets.analytics.assets import (ASSETS, cross_sell_potential, customer_saturation, factor_exports,
                                          product_graph, substitutes)

__all__ = ["ASSETS", "cross_sell_potential", "customer_saturation", "factor_exports", "product_graph", "substitutes"]
