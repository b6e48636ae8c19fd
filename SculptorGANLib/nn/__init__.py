"""Network building blocks and architectures (WP-UNet 2D/3D, GAN parts, pruning)."""
