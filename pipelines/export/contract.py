"""The served model's tensor contract, shared by export, the Triton repository writer and the client.

(pipelines/serve/backend/model.py repeats these names on purpose: it runs inside Triton's own
environment, where this package is not installed.)
"""

INPUT_NAME = "input_ids"  # int64 (batch, length), sessions left-padded with 0
OUTPUT_IDS = "item_ids"  # int64 (batch, k), best first
OUTPUT_SCORES = "scores"  # float32 (batch, k)
MODEL_FILE = "model.onnx"
