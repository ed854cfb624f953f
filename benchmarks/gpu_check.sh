#!/usr/bin/env bash
# The GPU check of the distributed/throughput work, for a machine with CUDA and no network:
# train 200 steps with bf16 and compile, stop it with SIGINT at a checkpoint, resume, sample;
# the same run through torchrun (NCCL, one process per GPU); then bench_train.py on CUDA.
# Wheels that the machine lacks may wait in .whl/ (diffusers, importlib_metadata).
#     bash benchmarks/gpu_check.sh OUT_DIR
set -u
out=${1:-/tmp/gpu-check}; mkdir -p "$out"; export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
nvidia-smi -L
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
cd "$(mktemp -d)"
flags="--device cuda --precision bf16 --compile --steps 200 --checkpoint-every 50 --sample-every 0"
python3 -m genflow train $flags --out run & pid=$!
until [ -e run/checkpoints/step-00000100 ] || ! kill -0 $pid 2>/dev/null; do sleep 0.2; done
kill -INT $pid; wait $pid; echo "interrupted run exit code $? (130 expected)"
ls run/checkpoints
time python3 -m genflow train --resume run; echo "resume exit code $?"
tail -n 3 run/metrics.jsonl
python3 -m genflow sample run --steps 20 --device cuda --out "$out/samples.png" --num-samples 64
torchrun --standalone --nproc-per-node "$(nvidia-smi -L | wc -l)" -m genflow train $flags --out ddp; echo "torchrun exit code $?"
tail -n 2 ddp/metrics.jsonl
torchrun --standalone --nproc-per-node "$(nvidia-smi -L | wc -l)" -m genflow sample ddp --num-samples 256 --steps 20 --out ddp.npz
cd - >/dev/null
python3 benchmarks/bench_train.py --device cuda --sizes 8 32 --batch 128 --steps 20 --rounds 3 --warmup 5 --json "$out/bench_train_cuda.jsonl"
