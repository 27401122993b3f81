"""Several GPUs for one video: the DiT on a pool of Ray actors, one sequence-parallel rank each."""
