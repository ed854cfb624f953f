"""The Python API in a few lines: a process, an exact model, any solver.

A Gaussian mixture has a closed-form denoiser, so this runs without training. With a trained
run, use ``genflow.api.load("runs/latest").model`` as the model instead.
"""

import genflow
from genflow.toy import GaussianMixture

data = GaussianMixture([[2.0, 2.0], [-2.0, -2.0]], std=0.3)
for process_name in ("ddpm", "sde", "rectified-flow", "cnf"):
    process = genflow.make_process(process_name)
    model = data.exact_model(process)  # model(x, t) -> the process's prediction
    for solver in ("euler", "heun", "dpm++2m"):
        stats = genflow.SamplingStats()
        x = genflow.sample(model, process, solver=solver, steps=10, shape=(2000, 2), seed=0, stats=stats)
        print(f"{process_name:>15} {solver:>8}: NFE {stats.nfe:3.0f}, mean |x| {x.abs().mean():.3f} (exact 2.0)")
