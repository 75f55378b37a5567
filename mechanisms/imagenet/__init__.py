"""ImageNet CGN mechanisms: BigGAN backbones and the U^2-Net saliency model."""
