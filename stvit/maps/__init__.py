"""The brain-map wing: attributions (Integrated Gradients, attention rollout), rendering as NIfTI and figures on
the model grid, and validation against known patterns."""
