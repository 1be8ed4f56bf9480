"""Sampling: the flow-matching schedule, the conditions' classifier-free-guidance rows, the
`Denoiser` seam every acceleration mode implements, and the Euler loop that drives it over
any number of requests and windows (spec/pipeline.md §6)."""
