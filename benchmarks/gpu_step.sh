#!/usr/bin/env bash
# One-GPU train-step benchmark of a 354M-class TokenFormer (experiments/progressive.py:354m: 12 layers,
# d 768, 2140 attention / 8560 FFN parameter tokens, sequence 2048) in bf16 compute with f32 parameters,
# norms and loss, cuDNN attention. Prints MFU against the bf16 matmul peak measured in the same run and,
# with SPEC_PEAK_TFLOPS (default 989: H100/H200 SXM dense bf16), against the datasheet peak. Then the
# profile that decides a fused Pattention kernel: Pattention against a GELU MLP and against its bare
# matmuls at the same shapes (benchmarks/pattention_cost.py; JSON next to OUT as *_pattention.json).
#
#   bash benchmarks/gpu_step.sh                                 # on a machine with one GPU
#   BATCH=32 REMAT=block bash benchmarks/gpu_step.sh --steps=20 # any extra flags go to step.py
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH="${BATCH:-16}"
REMAT="${REMAT:-none}"
CONFIG="${CONFIG:-experiments/progressive.py:354m}"
SPEC_PEAK_TFLOPS="${SPEC_PEAK_TFLOPS:-989}"
OUT="${OUT:-gpu_step.json}"
python -c 'import jax, sys; b = jax.default_backend(); sys.exit(0 if b == "gpu" else
  print(f"warning: JAX backend is {b}, not gpu; the figures will not be GPU figures", file=sys.stderr))'
python benchmarks/step.py --configs="$CONFIG" --kinds=tokenformer \
  --override="train.batch_size=$BATCH,model.remat=$REMAT,model.dtype=bfloat16" \
  --peak_dtype=bfloat16 --peak_size=8192 --spec_peak_tflops="$SPEC_PEAK_TFLOPS" \
  --steps=10 --warmup=3 --json="$OUT" "$@"
python benchmarks/pattention_cost.py --config="$CONFIG" --override="train.batch_size=$BATCH" \
  --dtype=bfloat16 --steps="${COST_STEPS:-10}" --json="${OUT%.json}_pattention.json"
