"""SculptorGAN: CT slice interpolation (conditional GAN), kidney/tumor segmentation (WP-UNet) and
3D surface models for surgical planning. Plain numpy/torch/SimpleITK/VTK; no Slicer needed."""
__version__ = "0.1.0"
