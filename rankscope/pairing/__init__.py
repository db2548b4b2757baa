"""Pairing tensors of two checkpoints (or an adapter and its base) and naming what each module is."""
