"""Input pipeline: WebDataset tar shards (LAION pairs, MMC4 interleaved docs) -> Grain -> batches."""
