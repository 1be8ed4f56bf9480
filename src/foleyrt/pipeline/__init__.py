"""The generation pipeline: the models loaded and placed (`models`), a clip's features
(`features`), and `FoleyPipeline` (`pipeline`): features -> the sampler over the transformer's
denoiser -> VAE decode -> files."""
