"""The internal tables every source (generator, adapters) produces and every stage reads.

Item ids are dense integers from 1; 0 is reserved as the padding token of sequence models.
"""

from __future__ import annotations

CATALOGUE_FILE = "catalogue.parquet"
EVENTS_FILE = "events.parquet"
GROUND_TRUTH_FILE = "ground_truth.json"  # generated world only
SOURCE_FILE = "source.json"  # which source and dataset produced the tables (lineage, drift reference)

# column -> pandas dtype family ("int", "float", "bool", "str", "datetime")
CATALOGUE_COLUMNS: dict[str, str] = {
    "item_id": "int",
    "name": "str",
    "manufacturer": "str",
    "composition": "str",  # "Paracetamol 500mg + Caffeine 30mg"
    "therapeutic_class": "str",
    "uses": "str",  # pipe-separated conditions: "fever|headache"
    "form": "str",
    "pack_size": "str",
    "price": "float",
    "rx_required": "bool",
    "tags": "str",  # pipe-separated
    "description": "str",  # free text for ~20% of products, else null
    "launch_ts": "datetime",
}
CATALOGUE_REQUIRED = ("item_id", "name", "price", "launch_ts")
# Sparse availability flags the safety policy reads (pipelines/pharmacy): kept when a source has them,
# absent or null means allowed.
CATALOGUE_OPTIONAL: dict[str, str] = {
    "restricted": "bool",  # never recommended (e.g. scheduled or narcotic products)
    "in_stock": "bool",  # false: out of stock, dropped from every list
    # Pipe-separated postcode prefixes the product ships to ("110|400": Delhi and Mumbai pincodes, e.g. a
    # cold-chain product); dropped for a request whose location matches none. Absent: ships everywhere.
    "deliverable_to": "str",
}
# Fields a product's meta-info is read from (Meta-Prod2Vec, cold start, GPT4Rec features).
META_FIELDS = ("manufacturer", "composition", "therapeutic_class", "uses", "form", "tags")

EVENTS_COLUMNS: dict[str, str] = {
    "user_id": "int",
    "session_id": "int",
    "item_id": "int",
    "event_type": "str",
    "timestamp": "datetime",
}
EVENTS_REQUIRED = tuple(EVENTS_COLUMNS)
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
# Implicit-feedback strength of each event type (graph edge weights, popularity).
EVENT_WEIGHTS = {"view": 1.0, "click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
