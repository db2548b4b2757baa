"""Pure numerics on arrays: exact spectra, spectrum metrics, subspace similarity, rank allocation."""
