"""Training and evaluating across processes and machines, on existing engines: Ray runs one task per adapter over
a cluster (`ray_jobs`, `ray_train`, `ray_eval`), accelerate/DDP trains one adapter data-parallel (`ddp`). The
training and evaluation functions are the local ones; these modules only decide where they run."""
