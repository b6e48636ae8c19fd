"""Phase I stage: through-plane upsampling and missing-slice filling (classical and SculptorGAN)."""
