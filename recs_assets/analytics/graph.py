"""The association rules as a weighted, directed product graph (networkx).

An edge a -> c carries the strongest rule in which a is in the antecedent and c in the
consequent. PageRank on that graph ranks the products the rules lead to ("destinations");
PageRank on the reversed graph ranks the products that lead on to many others ("gateways",
the entry points of a basket). Communities (Louvain, seeded) are groups of products bought
together far more than chance, on the undirected graph weighted by lift.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import polars as pl

from recs_assets import markdown

EDGE_SCHEMA = {"source": pl.String, "target": pl.String, "support": pl.Float64, "confidence": pl.Float64,
               "lift": pl.Float64, "rules": pl.UInt32}


def rule_edges(rules: pl.DataFrame, *, max_rule_items: int = 2, min_lift: float = 1.0) -> pl.DataFrame:
    """Rules (antecedents, consequents lists, support, confidence, lift) -> one row per (a, c)."""
    if rules.is_empty():
        return pl.DataFrame(schema=EDGE_SCHEMA)
    r = rules.filter((pl.col("antecedents").list.len() + pl.col("consequents").list.len() <= max_rule_items)
                     & (pl.col("lift") >= min_lift))
    e = (r.select("antecedents", "consequents", "support", "confidence", "lift")
         .explode("antecedents").explode("consequents")
         .rename({"antecedents": "source", "consequents": "target"})
         .group_by("source", "target")
         .agg(pl.col("support").max(), pl.col("confidence").max(), pl.col("lift").max(), pl.len().alias("rules")))
    return e.cast(EDGE_SCHEMA).sort("source", "target")


def analyze(edges: pl.DataFrame, *, weight: str = "lift", resolution: float = 1.0, seed: int = 0,
            damping: float = 0.85):
    """Nodes (item_id, pagerank, gateway, in/out degree, community, community_size) and the
    edges with their communities; communities are numbered by size, 0 the largest."""
    G = nx.DiGraph()
    for s, t, c in zip(edges["source"], edges["target"], edges["confidence"]):
        G.add_edge(s, t, confidence=float(c))
    nodes_schema = {"item_id": pl.String, "pagerank": pl.Float64, "gateway": pl.Float64, "in_degree": pl.Int32,
                    "out_degree": pl.Int32, "community": pl.Int32, "community_size": pl.Int32}
    if G.number_of_nodes() == 0:
        return pl.DataFrame(schema=nodes_schema), edges.with_columns(
            pl.lit(None, pl.Int32).alias("source_community"), pl.lit(None, pl.Int32).alias("target_community"))
    pr = nx.pagerank(G, alpha=damping, weight="confidence")
    gw = nx.pagerank(G.reverse(copy=False), alpha=damping, weight="confidence")
    # Undirected weights: the strongest of the two directions.
    und = (edges.with_columns(pl.min_horizontal("source", "target").alias("u"), pl.max_horizontal("source", "target").alias("v"))
           .group_by("u", "v").agg(pl.col(weight).max().alias("w")))
    H = nx.Graph()
    H.add_nodes_from(sorted(G.nodes))
    H.add_weighted_edges_from(zip(und["u"], und["v"], und["w"].cast(pl.Float64)))
    comms = nx.community.louvain_communities(H, weight="weight", resolution=resolution, seed=seed)
    comms = sorted((sorted(c) for c in comms), key=lambda c: (-len(c), c[0]))
    label = {n: i for i, c in enumerate(comms) for n in c}
    size = {i: len(c) for i, c in enumerate(comms)}
    ids = sorted(G.nodes)
    nodes = pl.DataFrame({
        "item_id": ids, "pagerank": [pr[n] for n in ids], "gateway": [gw[n] for n in ids],
        "in_degree": [G.in_degree(n) for n in ids], "out_degree": [G.out_degree(n) for n in ids],
        "community": [label[n] for n in ids], "community_size": [size[label[n]] for n in ids],
    }, schema=nodes_schema)
    comm = pl.DataFrame({"item_id": ids, "c": [label[n] for n in ids]}, schema={"item_id": pl.String, "c": pl.Int32})
    e = (edges.join(comm.rename({"item_id": "source", "c": "source_community"}), on="source", how="left")
         .join(comm.rename({"item_id": "target", "c": "target_community"}), on="target", how="left"))
    return nodes, e


def plot_communities(nodes: pl.DataFrame, edges: pl.DataFrame, titles: dict[str, str], *, top: int = 6,
                     max_nodes: int = 40, seed: int = 0) -> str:
    """A PNG (markdown data URI) of the largest communities: size ~ PageRank, colour = community."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if nodes.is_empty():
        return "_(no rules, no graph)_"
    keep = (nodes.filter(pl.col("community") < top).sort("pagerank", descending=True)
            .with_columns(pl.int_range(pl.len()).over("community").alias("r")).filter(pl.col("r") < max_nodes))
    ids = set(keep["item_id"].to_list())
    comm = dict(zip(keep["item_id"], keep["community"]))
    pr = dict(zip(keep["item_id"], keep["pagerank"]))
    G = nx.Graph()
    G.add_nodes_from(ids)
    G.add_edges_from((s, t) for s, t in zip(edges["source"], edges["target"]) if s in ids and t in ids)
    # Each community laid out on its own, the communities placed around a circle.
    shown = sorted(set(comm.values()))
    pos = {}
    for j, c in enumerate(shown):
        members = sorted(n for n in ids if comm[n] == c)
        sub = nx.spring_layout(G.subgraph(members), seed=seed) if len(members) > 1 else {members[0]: np.zeros(2)}
        angle = 2 * np.pi * j / max(len(shown), 1)
        centre = 3.0 * np.array([np.cos(angle), np.sin(angle)]) if len(shown) > 1 else np.zeros(2)
        pos.update({n: centre + np.asarray(xy) for n, xy in sub.items()})
    order = sorted(G.nodes)
    fig, ax = plt.subplots(figsize=(13, 8))
    inside = [(s, t) for s, t in G.edges if comm[s] == comm[t]]
    across = [(s, t) for s, t in G.edges if comm[s] != comm[t]]
    nx.draw_networkx_edges(G, pos, edgelist=across, ax=ax, alpha=0.04, width=0.5)
    nx.draw_networkx_edges(G, pos, edgelist=inside, ax=ax, alpha=0.2, width=0.6)
    cmap = plt.get_cmap("tab10")
    mx = max(pr.values())
    nx.draw_networkx_nodes(G, pos, nodelist=order, ax=ax, node_color=[cmap(comm[n] % 10) for n in order],
                           node_size=[20 + 400 * pr[n] / mx for n in order], alpha=0.85)
    sizes = dict(zip(nodes["community"], nodes["community_size"]))
    for c in shown:
        lead = keep.filter(pl.col("community") == c).row(0, named=True)["item_id"]
        ax.scatter([], [], color=cmap(c % 10), label=f"{c}: {(titles.get(lead) or lead)[:40]} ({sizes[c]} products)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=11, frameon=False, markerscale=2.5,
              title="community: leading product (size)", title_fontsize=12, alignment="left")
    ax.set_title(f"Product graph: the {len(shown)} largest communities (node size = PageRank)")
    ax.axis("off")
    fig.tight_layout()
    return markdown.figure(fig, "product graph", dpi=75)
