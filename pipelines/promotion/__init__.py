"""Promotion: the register stage in steps (register.py), the gate's decision (gate.py), what the gate may
read and when (splits.py: validation to decide, the test split once, after), and the registry aliases
with manual promotion and rollback (aliases.py)."""
