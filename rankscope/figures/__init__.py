"""Figures drawn from saved results (never from the analyses themselves)."""
