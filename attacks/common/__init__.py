"""Pieces shared by several attacks (losses, latent search, final selection, traces)."""
