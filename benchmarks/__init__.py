"""`make bench`: the course's recipe against scratch, a linear probe, one-phase fine-tuning and the
published recipes of the well-known courses, on the same Clipart-8 splits (see benchmarks/run.py)."""
