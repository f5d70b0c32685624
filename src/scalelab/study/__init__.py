"""Data-scaling studies: a spec, its plan of runs, a runner, and the results store."""
