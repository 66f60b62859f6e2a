"""The PyTorch reference (open_flamingo, open_clip, transformers) built in-process: the oracle the
tests compare against and the benchmarks race. Needs the test extra (`launch/setup.sh test`)."""
