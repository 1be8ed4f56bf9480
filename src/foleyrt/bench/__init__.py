"""`foleyrt bench` as a library: every function measures and returns (or yields) rows of plain
values; `foleyrt.cli.bench` formats and prints them.

- `loop`: the 50-step CFG denoising loop per acceleration mode (random weights; speed does not
  depend on their values), with FLOPs, achieved TFLOP/s, memory and the distance from an fp32
  run;
- `pipeline`: the whole pipeline from a video file to a written MP4, per runtime variant;
- `profile`: GPU kernel times of one compiled forward;
- `models`: real-size random models and conditions for all of them.
"""
