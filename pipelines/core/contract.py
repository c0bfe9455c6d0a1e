"""The served model's tensor contract, shared by export, the Triton repository writer and the client.

(pipelines/serve/backend/model.py repeats these names on purpose: it runs inside Triton's own
environment, where this package is not installed.)
"""

INPUT_NAME = "input_ids"  # int64 (batch, length), sessions left-padded with 0
# int64 (batch, length) aligned with input_ids: event kind codes (1 view, 2 click, 3 add_to_cart,
# 4 purchase; 0 unknown/padding). Only models trained with event kinds have it; optional when served.
EVENT_TYPES_NAME = "event_types"
OUTPUT_IDS = "item_ids"  # int64 (batch, k), best first
OUTPUT_SCORES = "scores"  # float32 (batch, k)
MODEL_FILE = "model.onnx"
