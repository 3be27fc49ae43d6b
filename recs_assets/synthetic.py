"""Seeded synthetic e-commerce data: a catalog and sessions in the generic event format.

The generator plants structure that a good model can recover, and returns it as ground truth:

* **taste clusters**: every item belongs to one of ``n_clusters`` latent clusters (each cluster
  has two "home" categories, so titles/descriptions also cluster); every user belongs to one
  cluster and draws a share ``p_taste`` of its views from that cluster's items;
* **power-law popularity**: item weights follow a Zipf law ``1 / rank ** zipf_a`` over a random
  ranking, both for in-cluster and for global draws;
* **funnels**: each session is a run of views; a viewed item is added with ``p_add``, an added
  item is purchased with ``p_purchase`` at the session's checkout;
* **co-purchase groups**: small sets (2-4 items, mostly of one cluster); when a purchased item
  belongs to a group, with ``p_group`` the other members are viewed, added and bought in the
  same basket too.

Events use the canonical generic columns ``user_id, item_id, ts, event, quantity, price,
basket_id`` (``ts`` in ms since the epoch, ``basket_id`` is the session id: a session never
spans users, and all purchases of a session share it). Events are sorted by user, then time.
The number of events is ``n_events`` in expectation (within a fraction of a percent at scale).

Output is identical for a given seed and parameters however it is consumed (``generate`` in
memory, or ``generate_to_dir`` streaming): users are generated in fixed blocks of
``BLOCK_USERS`` users, each with its own seeded stream.

Files written by :func:`write` / :func:`generate_to_dir` into ``out_dir``:

* ``catalog.parquet``: ``item_id, title, description, brand, category, price``;
* ``events.parquet`` or, when there are more than ``rows_per_file`` events, several files
  ``events-00000.parquet, events-00001.parquet, ...`` (each at most about ``rows_per_file``
  rows, so memory stays bounded while streaming). Read them all with the glob
  ``out_dir/events*.parquet`` (see :func:`read`);
* ``truth.npz``: ``user_cluster``, ``item_cluster``, ``item_popularity``,
  ``group_items`` + ``group_offsets`` (CSR of the co-purchase groups, item indices),
  ``cluster_categories``;
* ``truth.json``: the parameters, the co-purchase groups as item ids, the cluster home
  categories, and the counts.

Ids are ``U`` / ``I`` + a zero-padded index (``U0000042``, ``I0000123``), so index ``i`` of the
truth arrays is user/item id ``i``; see :func:`user_ids` / :func:`item_ids`.

CLI::

    python -m recs_assets.synthetic --users 1000000 --items 100000 --events 20000000 \
        --seed 0 --out /tmp/synth

Plain numpy + polars (no Dagster), so benchmarks can import it cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

__all__ = [
    "SyntheticConfig",
    "SyntheticData",
    "generate",
    "generate_to_dir",
    "iter_event_frames",
    "write",
    "read",
    "user_ids",
    "item_ids",
    "EVENT_TYPES",
    "EVENT_SCHEMA",
    "RATINGS_SCHEMA",
    "CATALOG_SCHEMA",
    "main",
]

EVENT_TYPES = ("view", "add", "purchase")
EVENT_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "ts": pl.Int64,
    "event": pl.String,
    "quantity": pl.Int32,
    "price": pl.Float64,
    "basket_id": pl.String,
}
#: ``shape="ratings"``: one row per (user, item) like a ratings data set, no basket ids, no price
RATINGS_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "ts": pl.Int64,
    "event": pl.String,
    "rating": pl.Int8,
}
SHAPES = ("sessions", "ratings")
CATALOG_SCHEMA = {
    "item_id": pl.String,
    "title": pl.String,
    "description": pl.String,
    "brand": pl.String,
    "category": pl.String,
    "price": pl.Float64,
}

#: users per generation block; fixed so that output does not depend on how it is consumed.
BLOCK_USERS = 32_768
DEFAULT_END = datetime(2024, 1, 1, tzinfo=timezone.utc)
_DAY_MS = 86_400_000
_MAX_SESSION_MS = 6 * 3_600_000  # session starts leave this much room before the period end

# --------------------------------------------------------------------------------------------
# Vocabulary: per category nouns, adjectives, materials, features and a median price.
# --------------------------------------------------------------------------------------------

_COLOURS = [
    "Red", "Blue", "Green", "Ivory", "Black", "White", "Pink", "Grey", "Mustard", "Navy",
    "Teal", "Sage", "Cream", "Charcoal", "Coral", "Lilac", "Ochre", "Mint",
]

_CATEGORIES: dict[str, dict] = {
    "Kitchen": dict(
        nouns=["Mug", "Teapot", "Saucepan", "Chopping Board", "Colander", "Whisk", "Storage Jar",
               "Mixing Bowl", "Dinner Plate", "Kettle", "Spatula", "Ladle"],
        adjs=["Rustic", "Everyday", "Chef's", "Stackable", "Nonstick", "Farmhouse", "Classic"],
        materials=["Ceramic", "Stoneware", "Stainless Steel", "Bamboo", "Cast Iron", "Enamel"],
        features=["dishwasher safe", "oven safe to 220C", "with a heat-resistant handle",
                  "made for daily cooking", "food safe glaze"],
        price=14.0),
    "Garden": dict(
        nouns=["Planter", "Watering Can", "Trowel", "Bird Feeder", "Garden Hose", "Seed Tray",
               "Gardening Gloves", "Plant Pot", "Wind Chime", "Bird Bath"],
        adjs=["Weatherproof", "Hanging", "Potting", "Heritage", "Outdoor", "Sturdy"],
        materials=["Terracotta", "Galvanised Steel", "Rattan", "Teak", "Zinc", "Recycled Plastic"],
        features=["frost resistant", "for patios and balconies", "rust proof finish",
                  "with drainage holes", "for keen gardeners"],
        price=18.0),
    "Lighting": dict(
        nouns=["Table Lamp", "Pendant Shade", "Fairy Lights", "Candle Holder", "Night Light",
               "Lantern", "Floor Lamp", "Wall Sconce", "Tea Light Holder"],
        adjs=["Warm Glow", "Dimmable", "Vintage", "Industrial", "Cordless", "Scandi"],
        materials=["Brass", "Frosted Glass", "Linen", "Copper Wire", "Paper", "Wrought Iron"],
        features=["LED bulb included", "battery operated with timer", "soft ambient light",
                  "E27 fitting", "energy saving"],
        price=25.0),
    "Bedding": dict(
        nouns=["Cushion Cover", "Throw", "Duvet Cover", "Pillowcase", "Blanket", "Bath Towel",
               "Rug", "Curtain", "Fitted Sheet", "Bedspread"],
        adjs=["Cosy", "Chunky Knit", "Quilted", "Soft", "Embroidered", "Reversible"],
        materials=["Cotton", "Wool", "Velvet", "Linen", "Fleece", "Jacquard"],
        features=["machine washable", "300 thread count", "hypoallergenic filling",
                  "with hidden zip", "tog rated for all seasons"],
        price=22.0),
    "Stationery": dict(
        nouns=["Notebook", "Pen Set", "Greeting Card", "Wrapping Paper", "Sticker Sheet",
               "Desk Organiser", "Journal", "Postcard Set", "Pencil Case", "Planner"],
        adjs=["Illustrated", "Dotted", "Pocket", "Hardback", "Botanical", "Retro"],
        materials=["Recycled Paper", "Kraft Card", "Faux Leather", "Cardboard", "Washi"],
        features=["120 gsm pages", "with elastic closure", "acid free paper",
                  "blank inside for your message", "lay flat binding"],
        price=5.0),
    "Toys": dict(
        nouns=["Jigsaw Puzzle", "Building Blocks", "Plush Bear", "Kite", "Yo-Yo", "Spinning Top",
               "Rag Doll", "Toy Car", "Skipping Rope", "Marble Run"],
        adjs=["Wooden", "Educational", "Classic", "Mini", "Colourful", "Wind-Up"],
        materials=["Beech Wood", "Felt", "Tin", "Organic Cotton", "Plastic-Free Card"],
        features=["suitable from 3 years", "non toxic paints", "encourages imaginative play",
                  "safety tested", "for indoor and outdoor play"],
        price=9.0),
    "Party": dict(
        nouns=["Bunting", "Balloon Set", "Paper Napkins", "Party Cups", "Cake Stand",
               "Birthday Candles", "Gift Bag", "Confetti", "Paper Plates", "Piñata"],
        adjs=["Festive", "Metallic", "Polka Dot", "Celebration", "Pastel", "Glitter"],
        materials=["Paper", "Foil", "Biodegradable Latex", "Card", "Bamboo Fibre"],
        features=["pack of 20", "for birthdays and weddings", "compostable",
                  "easy to hang", "matching tableware available"],
        price=4.0),
    "Bags": dict(
        nouns=["Tote Bag", "Backpack", "Lunch Bag", "Purse", "Shopping Bag", "Wash Bag",
               "Shoulder Bag", "Laptop Sleeve", "Coin Pouch"],
        adjs=["Foldable", "Reusable", "Insulated", "Everyday", "Travel", "Printed"],
        materials=["Canvas", "Jute", "Leather", "Nylon", "Recycled Polyester", "Cork"],
        features=["with inner pocket", "water resistant", "adjustable strap",
                  "holds up to 15 kg", "zip fastening"],
        price=16.0),
    "Jewellery": dict(
        nouns=["Necklace", "Bracelet", "Earrings", "Hair Clip", "Brooch", "Ring", "Anklet",
               "Pendant", "Charm"],
        adjs=["Delicate", "Statement", "Beaded", "Handmade", "Dainty", "Vintage Style"],
        materials=["Sterling Silver", "Gold Plated", "Freshwater Pearl", "Rose Gold", "Resin"],
        features=["nickel free", "gift boxed", "adjustable length", "hypoallergenic",
                  "hand finished"],
        price=20.0),
    "Bathroom": dict(
        nouns=["Soap Dish", "Toothbrush Holder", "Shower Curtain", "Bath Mat", "Toilet Roll Holder",
               "Vanity Mirror", "Soap Dispenser", "Bath Caddy"],
        adjs=["Spa", "Minimalist", "Anti-Slip", "Coastal", "Modern", "Quick Dry"],
        materials=["Marble", "Bamboo", "Chrome", "Frosted Glass", "Waffle Cotton", "Porcelain"],
        features=["moisture resistant", "easy to clean", "wall mountable",
                  "non slip base", "matching set available"],
        price=12.0),
    "Christmas": dict(
        nouns=["Bauble", "Wreath", "Advent Calendar", "Tree Topper", "Stocking", "Nativity Set",
               "Tinsel", "Christmas Cracker", "Snow Globe", "Hanging Decoration"],
        adjs=["Festive", "Glittered", "Nordic", "Traditional", "Frosted", "Jolly"],
        materials=["Glass", "Felt", "Wood", "Velvet", "Pine Cone", "Tinplate"],
        features=["set of 6", "hand painted", "for the tree or mantelpiece",
                  "reusable every year", "comes in a gift box"],
        price=8.0),
    "Storage": dict(
        nouns=["Storage Box", "Basket", "Wall Shelf", "Storage Tin", "Drawer Organiser",
               "Hook Rack", "Blanket Trunk", "Magazine Rack", "Crate"],
        adjs=["Stackable", "Collapsible", "Lidded", "Wall Mounted", "Modular", "Vintage"],
        materials=["Seagrass", "Metal Mesh", "Pine", "Willow", "Felt", "Enamelled Tin"],
        features=["with handles", "keeps clutter at bay", "fits standard shelves",
                  "easy assembly", "label holder included"],
        price=17.0),
    "Decor": dict(
        nouns=["Wall Clock", "Picture Frame", "Vase", "Figurine", "Wall Sign", "Photo Album",
               "Doorstop", "Mirror", "Wall Art Print"],
        adjs=["Ornate", "Mid-Century", "Distressed", "Geometric", "Shabby Chic", "Art Deco"],
        materials=["Mango Wood", "Glazed Ceramic", "Gilt Metal", "Reclaimed Wood", "Resin"],
        features=["ready to hang", "silent sweep movement", "holds a 6x4 photo",
                  "hand finished", "makes a lovely gift"],
        price=19.0),
    "Pets": dict(
        nouns=["Dog Bowl", "Cat Toy", "Pet Bed", "Dog Lead", "Collar", "Scratching Post",
               "Treat Jar", "Pet Blanket", "Chew Toy"],
        adjs=["Durable", "Washable", "Orthopaedic", "Squeaky", "Reflective", "Calming"],
        materials=["Rope", "Natural Rubber", "Sherpa Fleece", "Stainless Steel", "Sisal"],
        features=["for small and large breeds", "machine washable cover", "non slip base",
                  "vet approved", "chew resistant"],
        price=13.0),
    "Baby": dict(
        nouns=["Bib", "Rattle", "Baby Blanket", "Sleepsuit", "Teether", "Cot Mobile",
               "Muslin Square", "Booties", "Comforter"],
        adjs=["Gentle", "Organic", "Newborn", "Snuggly", "Pastel", "Sensory"],
        materials=["Organic Cotton", "Muslin", "Silicone", "Bamboo Jersey", "Knitted Wool"],
        features=["suitable from birth", "BPA free", "soft on delicate skin",
                  "machine washable at 40C", "gift ready"],
        price=11.0),
    "Outdoor": dict(
        nouns=["Picnic Blanket", "Cool Bag", "Flask", "Camping Mug", "Hammock", "Deck Chair",
               "Water Bottle", "Picnic Basket", "Beach Towel"],
        adjs=["Portable", "Insulated", "Lightweight", "Waterproof", "Folding", "Adventure"],
        materials=["Enamel", "Ripstop Nylon", "Double Wall Steel", "Canvas", "Wicker"],
        features=["keeps drinks cold for 24 hours", "packs flat", "leak proof lid",
                  "with carry strap", "for camping and festivals"],
        price=21.0),
}

_SYLLABLES = [
    "ka", "lo", "ve", "ri", "no", "sa", "tu", "me", "da", "fi", "ro", "ne", "li", "ba", "zo",
    "pe", "mi", "ta", "vo", "ki",
]
_BRAND_SUFFIX = ["", " & Co", " Home", " Studio", " Living", " Works"]


# --------------------------------------------------------------------------------------------
# Parameters and result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 10_000
    n_items: int = 2_000
    n_events: int = 200_000
    n_clusters: int = 16
    seed: int = 0
    n_categories: int = len(_CATEGORIES)
    n_brands: int | None = None  # default: max(n_categories, n_items // 200)
    n_groups: int | None = None  # default: n_items // 100
    group_size: tuple[int, int] = (2, 4)  # inclusive range of co-purchase group sizes
    zipf_a: float = 0.8  # item popularity exponent
    p_taste: float = 0.75  # share of views drawn from the user's taste cluster
    p_add: float = 0.25  # view -> add
    p_purchase: float = 0.4  # add -> purchase
    p_group: float = 0.5  # purchase of a group member -> the rest of the group is bought too
    session_views: float = 6.0  # mean views per session (geometric)
    user_activity_sigma: float = 1.0  # log-normal spread of user activity
    days: float = 365.0
    end_ms: int = int(DEFAULT_END.timestamp() * 1000)
    # "sessions": view/add/purchase funnels with basket ids; "ratings": one row per (user, item),
    # no basket_id and no price, rated in dense bursts (about ``day_events`` per active user-day)
    shape: str = "sessions"
    day_events: float = 40.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}")
        if self.day_events < 1.0:
            raise ValueError("day_events must be >= 1")
        if self.n_users < 1 or self.n_items < 2 or self.n_events < 0:
            raise ValueError("need n_users >= 1, n_items >= 2, n_events >= 0")
        if not 1 <= self.n_clusters <= self.n_items:
            raise ValueError("need 1 <= n_clusters <= n_items")
        if not 1 <= self.n_categories <= len(_CATEGORIES):
            raise ValueError(f"n_categories must be in 1..{len(_CATEGORIES)}")
        lo, hi = self.group_size
        if not 2 <= lo <= hi:
            raise ValueError("group_size must be (lo, hi) with 2 <= lo <= hi")
        for name in ("p_taste", "p_add", "p_purchase", "p_group"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability")
        if self.session_views < 1.0:
            raise ValueError("session_views must be >= 1")
        if not 2 * _MAX_SESSION_MS < self.days * _DAY_MS <= 100 * 366 * _DAY_MS:
            raise ValueError("days must be between half a day and 100 years")

    @property
    def start_ms(self) -> int:
        return self.end_ms - int(round(self.days * _DAY_MS))

    @property
    def brands(self) -> int:
        return self.n_brands if self.n_brands is not None else max(self.n_categories, self.n_items // 200)

    @property
    def groups(self) -> int:
        if self.n_groups is not None:
            return self.n_groups
        return self.n_items // 100

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["group_size"] = list(self.group_size)
        return d


@dataclass
class SyntheticData:
    """Generated tables plus the planted ground truth (indices are user/item id numbers)."""

    catalog: pl.DataFrame
    events: pl.DataFrame
    user_cluster: np.ndarray  # (n_users,) int: taste cluster of user i ("U%07d" % i)
    item_cluster: np.ndarray  # (n_items,) int: cluster of item j ("I%07d" % j)
    copurchase_groups: list[np.ndarray]  # item indices of each planted group
    item_popularity: np.ndarray  # (n_items,) Zipf weight of each item (sums to 1)
    cluster_categories: np.ndarray  # (n_clusters, 2) category indices: home categories
    config: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def categories(self) -> list[str]:
        return list(_CATEGORIES)[: self.config.n_categories]


def _id_width(n: int) -> int:
    return max(7, len(str(max(n - 1, 0))))


def user_ids(idx: np.ndarray | list[int], n_users: int = 10_000_000) -> list[str]:
    """Ids of user indices (``n_users`` only matters past 10M users, where ids get wider)."""
    w = _id_width(n_users)
    return [f"U{int(i):0{w}d}" for i in idx]


def item_ids(idx: np.ndarray | list[int], n_items: int = 10_000_000) -> list[str]:
    """Ids of item indices (``n_items`` only matters past 10M items, where ids get wider)."""
    w = _id_width(n_items)
    return [f"I{int(i):0{w}d}" for i in idx]


def _id_expr(col: str, prefix: str, width: int) -> pl.Expr:
    return pl.concat_str(pl.lit(prefix), pl.col(col).cast(pl.String).str.zfill(width))


# --------------------------------------------------------------------------------------------
# The world: catalog, clusters, popularity, groups, user activity (everything but events)
# --------------------------------------------------------------------------------------------


class _World:
    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        n_items, n_users, k = cfg.n_items, cfg.n_users, cfg.n_clusters

        # clusters: items uniform, users with mildly uneven cluster shares
        self.item_cluster = rng.integers(0, k, n_items).astype(np.int32)
        # make sure no cluster is empty (small catalogs)
        self.item_cluster[rng.permutation(n_items)[:k]] = np.arange(k, dtype=np.int32)
        self.cluster_share = rng.dirichlet(np.full(k, 10.0))
        self.user_cluster = rng.choice(k, size=n_users, p=self.cluster_share).astype(np.int32)

        # popularity: Zipf over a random ranking
        rank = rng.permutation(n_items)
        pop = 1.0 / (rank + 1.0) ** cfg.zipf_a
        self.item_popularity = pop / pop.sum()

        # sampling tables: items sorted by cluster, one cumulative array; cluster c's items
        # occupy [lo[c], hi[c]) of it
        self.by_cluster = np.argsort(self.item_cluster, kind="stable").astype(np.int64)
        self.cum = np.cumsum(self.item_popularity[self.by_cluster])
        self.cum[-1] = 1.0
        counts = np.bincount(self.item_cluster, minlength=k)
        self.hi = np.cumsum(counts)
        self.lo = self.hi - counts
        self.cum_lo = np.where(self.lo > 0, self.cum[np.maximum(self.lo - 1, 0)], 0.0)
        self.cum_hi = self.cum[self.hi - 1]

        self._catalog(rng)
        self._groups(rng)
        self._users(rng)

    # -- catalog ---------------------------------------------------------------------------
    def _catalog(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        n, nc = cfg.n_items, cfg.n_categories
        names = list(_CATEGORIES)[:nc]
        vocab = [_CATEGORIES[c] for c in names]
        # every cluster has two home categories; 85% of its items are in them
        home = np.stack([rng.choice(nc, size=2, replace=nc < 2) for _ in range(cfg.n_clusters)])
        self.cluster_categories = home.astype(np.int32)
        u = rng.random(n)
        cl = self.item_cluster
        cat = np.where(u < 0.6, home[cl, 0], home[cl, 1])
        cat = np.where(u >= 0.85, rng.integers(0, nc, n), cat).astype(np.int64)
        self.item_category = cat

        def table(key: str) -> tuple[pl.Series, np.ndarray, np.ndarray]:
            words = [w for v in vocab for w in v[key]]
            cnt = np.array([len(v[key]) for v in vocab])
            off = np.cumsum(cnt) - cnt
            return pl.Series(words, dtype=pl.String), off, cnt

        def pick(key: str) -> pl.Series:
            words, off, cnt = table(key)
            idx = off[cat] + (rng.random(n) * cnt[cat]).astype(np.int64)
            return words.gather(idx)

        # brands: each belongs to one category (round robin), names from syllables
        nb = max(cfg.brands, nc)
        brand_names = []
        for b in range(nb):
            digits, x = [], b
            for _ in range(max(2, int(np.ceil(np.log(max(nb, 2)) / np.log(len(_SYLLABLES)))))):
                digits.append(x % len(_SYLLABLES))
                x //= len(_SYLLABLES)
            name = "".join(_SYLLABLES[d] for d in digits).capitalize()
            brand_names.append(name + _BRAND_SUFFIX[b % len(_BRAND_SUFFIX)])
        brand_cat = np.arange(nb) % nc
        order = np.argsort(brand_cat, kind="stable")
        bcnt = np.bincount(brand_cat, minlength=nc)
        boff = np.cumsum(bcnt) - bcnt
        brand = order[boff[cat] + (rng.random(n) * bcnt[cat]).astype(np.int64)]

        median = np.array([v["price"] for v in vocab])
        price = np.round(median[cat] * np.exp(rng.normal(0.0, 0.55, n)), 2)
        self.item_price = np.maximum(price, 0.5)

        colours = pl.Series(_COLOURS, dtype=pl.String)
        frame = pl.DataFrame(
            {
                "i": np.arange(n, dtype=np.int64),
                "brand": pl.Series(brand_names, dtype=pl.String).gather(brand),
                "category": pl.Series(names, dtype=pl.String).gather(cat),
                "adj": pick("adjs"),
                "adj2": pick("adjs"),
                "noun": pick("nouns"),
                "material": pick("materials"),
                "feature": pick("features"),
                "colour": colours.gather(rng.integers(0, len(_COLOURS), n)),
                "price": self.item_price,
            }
        )
        title = pl.concat_str(
            [pl.col("adj"), pl.col("colour"), pl.col("material"), pl.col("noun")], separator=" "
        )
        self.catalog = frame.select(
            _id_expr("i", "I", _id_width(n)).alias("item_id"),
            title.alias("title"),
            pl.format(
                "{} {} {} in {}, {}. By {}, from our {} range.",
                pl.col("adj2"),
                pl.col("material").str.to_lowercase(),
                pl.col("noun").str.to_lowercase(),
                pl.col("colour").str.to_lowercase(),
                pl.col("feature"),
                pl.col("brand"),
                pl.col("category").str.to_lowercase(),
            ).alias("description"),
            "brand",
            "category",
            "price",
        )

    # -- co-purchase groups ----------------------------------------------------------------
    def _groups(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        lo, hi = cfg.group_size
        ng = cfg.groups
        sizes = rng.integers(lo, hi + 1, ng)
        # never use more than half of the catalog
        while sizes.sum() > cfg.n_items // 2 and len(sizes):
            sizes = sizes[:-1]
        total = int(sizes.sum())
        self.group_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.item_group = np.full(cfg.n_items, -1, dtype=np.int64)
        if total == 0:
            self.group_items = np.zeros(0, dtype=np.int64)
            return
        # members: moderately popular items (weight sqrt(pop)), grouped mostly within a cluster
        w = np.sqrt(self.item_popularity)
        cand = rng.choice(cfg.n_items, size=total, replace=False, p=w / w.sum())
        cand = cand[np.lexsort((rng.random(total), self.item_cluster[cand]))]
        # shuffle which group gets which consecutive run, so groups are not ordered by cluster
        perm = rng.permutation(len(sizes))
        sizes_p = sizes[perm]
        starts_p = np.concatenate([[0], np.cumsum(sizes_p)[:-1]])
        members = [cand[starts_p[j] : starts_p[j] + sizes_p[j]] for j in np.argsort(perm)]
        self.group_items = np.concatenate(members).astype(np.int64)
        for g in range(len(sizes)):
            self.item_group[self.group_items[self.group_offsets[g] : self.group_offsets[g + 1]]] = g

    @property
    def copurchase_groups(self) -> list[np.ndarray]:
        o = self.group_offsets
        return [self.group_items[o[g] : o[g + 1]].copy() for g in range(len(o) - 1)]

    # -- users -----------------------------------------------------------------------------
    def _users(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        # expected events per view, to turn n_events into a number of views
        pv = (1 - cfg.p_taste) * self.item_popularity + cfg.p_taste * (
            self.cluster_share[self.item_cluster]
            * self.item_popularity
            / (self.cum_hi - self.cum_lo)[self.item_cluster]
        )
        sizes = np.diff(self.group_offsets)
        in_group = self.item_group >= 0
        extra = np.zeros(cfg.n_items)
        extra[in_group] = sizes[self.item_group[in_group]] - 1
        companions = cfg.p_group * float((pv * extra).sum())
        pa, pb = cfg.p_add, cfg.p_add * cfg.p_purchase
        per_view = 1.0 + pa + pb + pb * companions * 3.0
        if cfg.shape == "ratings":
            per_view = 1.0 + companions
        n_views = int(round(cfg.n_events / per_view))
        # heavy-tailed activity; every user gets at least one view when possible
        w = rng.lognormal(0.0, cfg.user_activity_sigma, cfg.n_users)
        base = 1 if n_views >= cfg.n_users else 0
        rest = n_views - base * cfg.n_users
        self.user_views = base + rng.multinomial(rest, w / w.sum()).astype(np.int64)
        self.expected_events_per_view = per_view


# --------------------------------------------------------------------------------------------
# Events, one block of users at a time
# --------------------------------------------------------------------------------------------


def _block_arrays(world: _World, b: int) -> dict[str, np.ndarray]:
    """Numeric events of users [b*BLOCK_USERS, ...): local session ids, sorted by user/time."""
    cfg = world.cfg
    rng = np.random.default_rng([cfg.seed, 1, b])
    u0 = b * BLOCK_USERS
    u1 = min(cfg.n_users, u0 + BLOCK_USERS)
    views = world.user_views[u0:u1]
    nv = int(views.sum())
    span = int(round(cfg.days * _DAY_MS))
    if nv == 0:
        z = np.zeros(0, dtype=np.int64)
        return dict(user=z, item=z, ts=z, code=z.astype(np.int8), qty=z.astype(np.int32),
                    sess=z, n_sess=0)
    vu = np.repeat(np.arange(u1 - u0, dtype=np.int64), views)

    # sessions: a new one at each user's first view, else with prob 1/session_views
    brk = rng.random(nv) < 1.0 / cfg.session_views
    first_of_user = (np.cumsum(views) - views)[views > 0]
    brk[first_of_user] = True
    s_first = np.flatnonzero(brk)
    vs = np.cumsum(brk) - 1
    ns = len(s_first)
    s_user = vu[s_first]
    # session start offsets, chronological within each user (sessions are contiguous per user)
    shift = max(span.bit_length(), 1)
    t0 = rng.integers(0, span - _MAX_SESSION_MS, ns)
    t0 = np.sort((s_user << shift) | t0) & ((1 << shift) - 1)

    # view times: exponential gaps (mean 45 s) inside a session
    gaps = rng.exponential(45_000.0, nv)
    gaps[s_first] = 0.0
    cg = np.cumsum(gaps)
    v_ts = t0[vs] + (cg - cg[s_first][vs]).astype(np.int64)

    # viewed items: taste cluster with prob p_taste, else global popularity
    uc = world.user_cluster[u0:u1][vu]
    taste = rng.random(nv) < cfg.p_taste
    r = rng.random(nv)
    x = np.where(taste, world.cum_lo[uc] + r * (world.cum_hi[uc] - world.cum_lo[uc]), r)
    pos = np.searchsorted(world.cum, x, side="right")
    pos = np.where(taste, np.clip(pos, world.lo[uc], world.hi[uc] - 1), np.minimum(pos, cfg.n_items - 1))
    v_item = world.by_cluster[pos]

    # funnel: add, then purchase at checkout
    a_idx = np.flatnonzero(rng.random(nv) < cfg.p_add)
    a_item, a_sess = v_item[a_idx], vs[a_idx]
    a_ts = v_ts[a_idx] + 1 + rng.exponential(20_000.0, len(a_idx)).astype(np.int64)
    p_sel = np.flatnonzero(rng.random(len(a_idx)) < cfg.p_purchase)
    p_item, p_sess, p_addts = a_item[p_sel], a_sess[p_sel], a_ts[p_sel]

    # co-purchase groups: the rest of the group is viewed, added, bought in the same basket
    g = world.item_group[p_item]
    trig = np.flatnonzero((g >= 0) & (rng.random(len(p_item)) < cfg.p_group))
    tg = g[trig]
    gsize = world.group_offsets[tg + 1] - world.group_offsets[tg]
    rep = np.repeat(np.arange(len(trig)), gsize)
    within = np.arange(len(rep)) - np.repeat(np.cumsum(gsize) - gsize, gsize)
    c_item = world.group_items[world.group_offsets[tg][rep] + within]
    keep = c_item != p_item[trig][rep]
    rep, within, c_item = rep[keep], within[keep], c_item[keep]
    c_sess = p_sess[trig][rep]
    c_vts = p_addts[trig][rep] + 1 + 2 * within
    c_ats = c_vts + 1

    # checkout per session: after its last add
    ck = np.full(ns, -1, dtype=np.int64)
    np.maximum.at(ck, a_sess, a_ts)
    np.maximum.at(ck, c_sess, c_ats)
    ck += 1 + rng.exponential(60_000.0, ns).astype(np.int64)
    n_bought = len(p_item) + len(c_item)
    qty = (1 + rng.poisson(0.35, n_bought)).astype(np.int32)

    sess = np.concatenate([vs, a_sess, p_sess, c_sess, c_sess, c_sess])
    item = np.concatenate([v_item, a_item, p_item, c_item, c_item, c_item])
    ts = np.concatenate([v_ts, a_ts, ck[p_sess], c_vts, c_ats, ck[c_sess]])
    code = np.concatenate([
        np.zeros(nv, np.int8), np.ones(len(a_item), np.int8), np.full(len(p_item), 2, np.int8),
        np.zeros(len(c_item), np.int8), np.ones(len(c_item), np.int8),
        np.full(len(c_item), 2, np.int8),
    ])
    q = np.ones(len(item), np.int32)
    q[nv + len(a_item) : nv + len(a_item) + len(p_item)] = qty[: len(p_item)]
    q[len(q) - len(c_item) :] = qty[len(p_item) :]
    np.minimum(ts, span - 1, out=ts)
    user = s_user[sess]

    # order: user, time, funnel step
    key = (user << (shift + 2)) | (ts << 2) | code.astype(np.int64)
    o = np.argsort(key, kind="stable")
    return dict(user=user[o] + u0, item=item[o], ts=ts[o] + cfg.start_ms, code=code[o],
                qty=q[o], sess=sess[o], n_sess=ns)


_EVENT_NAMES = pl.Series(list(EVENT_TYPES), dtype=pl.String)


def _ratings_arrays(world: _World, b: int) -> dict[str, np.ndarray]:
    """Ratings-shaped events of one user block: dense days, each (user, item) at most once."""
    cfg = world.cfg
    rng = np.random.default_rng([cfg.seed, 2, b])
    u0 = b * BLOCK_USERS
    u1 = min(cfg.n_users, u0 + BLOCK_USERS)
    views = world.user_views[u0:u1]
    nv = int(views.sum())
    span = int(round(cfg.days * _DAY_MS))
    if nv == 0:
        z = np.zeros(0, dtype=np.int64)
        return dict(user=z, item=z, ts=z, rating=z.astype(np.int8))
    # items: taste cluster with prob p_taste, else global popularity; drawn five times over so
    # that each user's first `views` distinct items can be kept (a user rates an item once)
    n_u = u1 - u0
    du = np.repeat(np.arange(n_u, dtype=np.int64), 5 * views)
    uc = world.user_cluster[u0:u1][du]
    taste = rng.random(len(du)) < cfg.p_taste
    r = rng.random(len(du))
    x = np.where(taste, world.cum_lo[uc] + r * (world.cum_hi[uc] - world.cum_lo[uc]), r)
    pos = np.searchsorted(world.cum, x, side="right")
    pos = np.where(taste, np.clip(pos, world.lo[uc], world.hi[uc] - 1), np.minimum(pos, cfg.n_items - 1))
    drawn = world.by_cluster[pos]
    o = np.lexsort((np.arange(len(du)), drawn, du))
    first = np.ones(len(o), bool)
    first[1:] = (du[o][1:] != du[o][:-1]) | (drawn[o][1:] != drawn[o][:-1])
    o = np.sort(o[first])  # distinct (user, item), in draw order
    rank = np.arange(len(o)) - np.searchsorted(du[o], du[o])
    o = o[rank < views[du[o]]]
    vu, item, taste = du[o], drawn[o], taste[o]
    nv = len(vu)
    per_user = np.bincount(vu, minlength=n_u)
    # active days: a new one at each user's first event, else with prob 1/day_events
    brk = rng.random(nv) < 1.0 / cfg.day_events
    brk[(np.cumsum(per_user) - per_user)[per_user > 0]] = True
    d_first = np.flatnonzero(brk)
    vd = np.cumsum(brk) - 1
    shift = max(span.bit_length(), 1)
    t0 = rng.integers(0, span - _MAX_SESSION_MS, len(d_first))
    t0 = np.sort((vu[d_first] << shift) | t0) & ((1 << shift) - 1)
    # one rating every ~40 s within a day: the whole day is one session at any sane gap
    gaps = rng.exponential(40_000.0, nv)
    gaps[d_first] = 0.0
    cg = np.cumsum(gaps)
    ts = t0[vd] + (cg - cg[d_first][vd]).astype(np.int64)
    # co-purchase groups: the rest of the group is rated right after, the same day
    g = world.item_group[item]
    trig = np.flatnonzero((g >= 0) & (rng.random(nv) < cfg.p_group))
    tg = g[trig]
    gsize = world.group_offsets[tg + 1] - world.group_offsets[tg]
    rep = np.repeat(np.arange(len(trig)), gsize)
    within = np.arange(len(rep)) - np.repeat(np.cumsum(gsize) - gsize, gsize)
    c_item = world.group_items[world.group_offsets[tg][rep] + within]
    keep = c_item != item[trig][rep]
    rep, within, c_item = rep[keep], within[keep], c_item[keep]
    user = np.concatenate([vu, vu[trig][rep]])
    item = np.concatenate([item, c_item])
    ts = np.minimum(np.concatenate([ts, ts[trig][rep] + 1 + within]), span - 1)
    liked = np.concatenate([taste, np.ones(len(c_item), bool)])
    rating = np.clip(np.rint(2.6 + 1.2 * liked + rng.normal(0.0, 0.9, len(item))), 1, 5).astype(np.int8)
    # a ratings data set holds each (user, item) once: keep the first
    o = np.lexsort((ts, item, user))
    first = np.ones(len(o), bool)
    first[1:] = (user[o][1:] != user[o][:-1]) | (item[o][1:] != item[o][:-1])
    o = o[first]
    o = o[np.lexsort((item[o], ts[o], user[o]))]
    return dict(user=user[o] + u0, item=item[o], ts=ts[o] + cfg.start_ms, rating=rating[o])


def _ratings_frame(world: _World, arr: dict) -> pl.DataFrame:
    cfg = world.cfg
    df = pl.DataFrame({"u": arr["user"], "i": arr["item"], "ts": arr["ts"], "rating": arr["rating"]})
    return df.select(
        _id_expr("u", "U", _id_width(cfg.n_users)).alias("user_id"),
        _id_expr("i", "I", _id_width(cfg.n_items)).alias("item_id"),
        pl.col("ts").cast(pl.Int64),
        pl.lit("purchase").alias("event"),
        pl.col("rating").cast(pl.Int8),
    )


def _schema(cfg: SyntheticConfig) -> dict:
    return RATINGS_SCHEMA if cfg.shape == "ratings" else EVENT_SCHEMA


def _block_frame(world: _World, arr: dict, sess_offset: int) -> pl.DataFrame:
    cfg = world.cfg
    item = arr["item"]
    df = pl.DataFrame(
        {
            "u": arr["user"],
            "i": item,
            "ts": arr["ts"],
            "event": _EVENT_NAMES.gather(arr["code"].astype(np.int64)),
            "quantity": arr["qty"],
            "price": world.item_price[item],
            "s": arr["sess"] + sess_offset,
        }
    )
    return df.select(
        _id_expr("u", "U", _id_width(cfg.n_users)).alias("user_id"),
        _id_expr("i", "I", _id_width(cfg.n_items)).alias("item_id"),
        pl.col("ts").cast(pl.Int64),
        "event",
        pl.col("quantity").cast(pl.Int32),
        pl.col("price").cast(pl.Float64),
        _id_expr("s", "S", 9).alias("basket_id"),
    )


def _n_blocks(cfg: SyntheticConfig) -> int:
    return -(-cfg.n_users // BLOCK_USERS)


def iter_event_frames(
    world_or_cfg: SyntheticConfig | _World, *, threads: int = 2
) -> Iterator[tuple[int, pl.DataFrame]]:
    """Yield ``(n_users_in_block, events_frame)`` block by block, in user order.

    With ``threads > 1`` the numeric part of the next blocks is computed in worker threads
    while the current block is formatted (results are identical)."""
    world = world_or_cfg if isinstance(world_or_cfg, _World) else _World(world_or_cfg)
    cfg = world.cfg
    nb = _n_blocks(cfg)
    offset = 0
    if cfg.shape == "ratings":
        for b in range(nb):
            yield min(BLOCK_USERS, cfg.n_users - b * BLOCK_USERS), _ratings_frame(world, _ratings_arrays(world, b))
        return
    if threads <= 1:
        for b in range(nb):
            arr = _block_arrays(world, b)
            yield min(BLOCK_USERS, cfg.n_users - b * BLOCK_USERS), _block_frame(world, arr, offset)
            offset += arr["n_sess"]
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = [pool.submit(_block_arrays, world, b) for b in range(min(nb, threads))]
        for b in range(nb):
            arr = pending.pop(0).result()
            nxt = b + threads
            if nxt < nb:
                pending.append(pool.submit(_block_arrays, world, nxt))
            yield min(BLOCK_USERS, cfg.n_users - b * BLOCK_USERS), _block_frame(world, arr, offset)
            offset += arr["n_sess"]


def generate(
    n_users: int = 10_000,
    n_items: int = 2_000,
    n_events: int = 200_000,
    *,
    n_clusters: int = 16,
    seed: int = 0,
    threads: int = 2,
    **params,
) -> SyntheticData:
    """Generate everything in memory. ``params`` are the other :class:`SyntheticConfig` fields."""
    cfg = SyntheticConfig(n_users=n_users, n_items=n_items, n_events=n_events,
                          n_clusters=n_clusters, seed=seed, **params)
    world = _World(cfg)
    frames = [f for _, f in iter_event_frames(world, threads=threads)]
    events = pl.concat(frames, rechunk=True) if frames else pl.DataFrame(schema=_schema(cfg))
    return _data(world, events)


def _data(world: _World, events: pl.DataFrame) -> SyntheticData:
    return SyntheticData(
        catalog=world.catalog,
        events=events,
        user_cluster=world.user_cluster,
        item_cluster=world.item_cluster,
        copurchase_groups=world.copurchase_groups,
        item_popularity=world.item_popularity,
        cluster_categories=world.cluster_categories,
        config=world.cfg,
    )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_OWN_FILES = ("catalog.parquet", "truth.json", "truth.npz")


def _clean(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for p in list(out.glob("events*.parquet")) + [out / f for f in _OWN_FILES]:
        if p.exists():
            p.unlink()


def _write_truth(out: Path, cfg: SyntheticConfig, user_cluster, item_cluster, groups,
                 popularity, cluster_categories, n_events: int, event_files: list[str]) -> None:
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    np.savez_compressed(
        out / "truth.npz",
        user_cluster=user_cluster,
        item_cluster=item_cluster,
        item_popularity=popularity,
        group_items=np.concatenate(groups) if groups else np.zeros(0, np.int64),
        group_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        cluster_categories=cluster_categories,
    )
    cats = list(_CATEGORIES)[: cfg.n_categories]
    meta = {
        "config": cfg.to_dict(),
        "n_events": n_events,
        "event_files": event_files,
        "categories": cats,
        "cluster_home_categories": [[cats[c] for c in row] for row in cluster_categories.tolist()],
        "copurchase_groups": [item_ids(g, cfg.n_items) for g in groups],
        "ids": {"user": f"U%0{_id_width(cfg.n_users)}d", "item": f"I%0{_id_width(cfg.n_items)}d"},
    }
    (out / "truth.json").write_text(json.dumps(meta, indent=1))


def _event_name(part: int) -> str:
    return f"events-{part:05d}.parquet"


def write(data: SyntheticData, out_dir: str | os.PathLike, *, rows_per_file: int = 4_000_000) -> Path:
    """Write ``data`` to ``out_dir`` (see the module docstring for the layout)."""
    out = Path(out_dir)
    _clean(out)
    data.catalog.write_parquet(out / "catalog.parquet")
    ev = data.events
    if ev.height <= rows_per_file:
        names = ["events.parquet"]
        ev.write_parquet(out / names[0])
    else:
        names = []
        for part, start in enumerate(range(0, ev.height, rows_per_file)):
            names.append(_event_name(part))
            ev.slice(start, rows_per_file).write_parquet(out / names[-1])
    _write_truth(out, data.config, data.user_cluster, data.item_cluster, data.copurchase_groups,
                 data.item_popularity, data.cluster_categories, ev.height, names)
    return out


def generate_to_dir(
    out_dir: str | os.PathLike,
    cfg: SyntheticConfig,
    *,
    rows_per_file: int = 4_000_000,
    threads: int = 2,
    progress: bool = False,
) -> dict:
    """Stream the data set to ``out_dir`` block by block (bounded memory). Returns counts."""
    out = Path(out_dir)
    _clean(out)
    world = _World(cfg)
    world.catalog.write_parquet(out / "catalog.parquet")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.n_users, unit="user", unit_scale=True, desc="recs-synth",
                   file=sys.stderr)
    names: list[str] = []
    buf: list[pl.DataFrame] = []
    buffered = 0
    n_events = 0

    def flush(writer: ThreadPoolExecutor, futures: list) -> None:
        nonlocal buf, buffered
        if not buf:
            return
        names.append(_event_name(len(names)))
        frame = pl.concat(buf, rechunk=False)
        futures.append(writer.submit(frame.write_parquet, out / names[-1]))
        buf, buffered = [], 0
        # keep at most one file being written in the background
        while len(futures) > 1:
            futures.pop(0).result()

    with ThreadPoolExecutor(max_workers=1) as writer:
        futures: list = []
        for n_u, frame in iter_event_frames(world, threads=threads):
            buf.append(frame)
            buffered += frame.height
            n_events += frame.height
            if buffered >= rows_per_file:
                flush(writer, futures)
            if bar is not None:
                bar.update(n_u)
                bar.set_postfix(events=f"{n_events:,}", refresh=False)
        flush(writer, futures)
        for f in futures:
            f.result()
    if bar is not None:
        bar.close()
    if len(names) == 1:
        os.replace(out / names[0], out / "events.parquet")
        names = ["events.parquet"]
    elif not names:
        pl.DataFrame(schema=_schema(cfg)).write_parquet(out / "events.parquet")
        names = ["events.parquet"]
    _write_truth(out, cfg, world.user_cluster, world.item_cluster, world.copurchase_groups,
                 world.item_popularity, world.cluster_categories, n_events, names)
    return {"users": cfg.n_users, "items": cfg.n_items, "events": n_events, "files": names}


def read(out_dir: str | os.PathLike) -> SyntheticData:
    """Read a directory written by :func:`write` / :func:`generate_to_dir`."""
    out = Path(out_dir)
    meta = json.loads((out / "truth.json").read_text())
    c = meta["config"]
    c["group_size"] = tuple(c["group_size"])
    cfg = SyntheticConfig(**c)
    t = np.load(out / "truth.npz")
    o = t["group_offsets"]
    groups = [t["group_items"][o[g] : o[g + 1]] for g in range(len(o) - 1)]
    return SyntheticData(
        catalog=pl.read_parquet(out / "catalog.parquet"),
        events=pl.read_parquet([out / f for f in meta["event_files"]]),
        user_cluster=t["user_cluster"],
        item_cluster=t["item_cluster"],
        copurchase_groups=groups,
        item_popularity=t["item_popularity"],
        cluster_categories=t["cluster_categories"],
        config=cfg,
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="recs-synth",
        description="Write a seeded synthetic catalog + events (generic format) as Parquet.",
    )
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--events", type=int, default=200_000, help="target number of events")
    p.add_argument("--clusters", type=int, default=16, help="number of taste clusters")
    p.add_argument("--groups", type=int, default=None, help="co-purchase groups (default items/100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=float, default=365.0, help="length of the period")
    p.add_argument("--end", default="2024-01-01", help="end of the period (UTC date, exclusive)")
    p.add_argument("--rows-per-file", type=int, default=4_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--shape", choices=SHAPES, default="sessions",
                   help="ratings: one row per (user, item), no basket_id/price, dense days of ratings")
    p.add_argument("--basketless", action="store_const", const="ratings", dest="shape",
                   help="same as --shape ratings")
    p.add_argument("--day-events", type=float, default=40.0, help="ratings shape: mean events per active user-day")
    a = p.parse_args(argv)
    end = datetime.fromisoformat(a.end)
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    cfg = SyntheticConfig(n_users=a.users, n_items=a.items, n_events=a.events,
                          n_clusters=a.clusters, n_groups=a.groups, seed=a.seed, days=a.days,
                          end_ms=int(end.timestamp() * 1000), shape=a.shape, day_events=a.day_events)
    t = time.perf_counter()
    info = generate_to_dir(a.out, cfg, rows_per_file=a.rows_per_file, threads=a.threads,
                           progress=not a.no_progress)
    print(
        f"wrote {info['events']:,} events ({len(info['files'])} file(s)), {cfg.n_items:,} items, "
        f"{cfg.n_users:,} users to {a.out} in {time.perf_counter() - t:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
