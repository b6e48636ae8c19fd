"""Phase II stage: kidney and tumor segmentation (WP-UNet), its preprocessing and anatomical post-processing."""
