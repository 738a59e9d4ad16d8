"""Training: splits, data loading, augmentation, losses, the trainer loop, checkpoints and logs."""
