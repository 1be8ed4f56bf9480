"""Media in and out: video probing/decoding into model inputs, and atomic audio/video output.

Everything here runs on the CPU with PyAV, Pillow and PyTorch (no ffmpeg binary needed)."""
