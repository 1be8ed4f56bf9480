"""The generation pipeline: features -> flow-matching sampler -> VAE decode."""
