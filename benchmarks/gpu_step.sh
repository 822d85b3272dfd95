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
#   WHEELS=.wheels bash benchmarks/gpu_step.sh                  # an offline machine: see below
#   CHECK=h100:1 bash benchmarks/gpu_step.sh                    # before renting: see below
#
# Before renting the GPU, CHECK=TOPOLOGY compiles this very step (same CONFIG, BATCH, REMAT, bf16) for
# that GPU on the machine at hand, which needs no GPU (pip install -e '.[gpu-compile]', and cuDNN for the
# cuDNN attention: docs/scaling.md), prints the memory per device against what JAX may use of the GPU's,
# the collectives and the attention that lowered, fails with what to change if it does not fit, and
# runs nothing.
#
# A GPU machine with JAX but no package index (and none of flax, optax, orbax-checkpoint, grain,
# ml_collections at our versions): download the wheels where pip works, for that machine's Python,
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .wheels \
#     flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 grain==0.2.18 array-record portpicker \
#     ml_collections==1.1.0
# and copy .wheels along. WHEELS=DIR installs them into a private folder put first on PYTHONPATH,
# without their dependencies and without touching the machine's own packages; the machine's JAX
# (with its CUDA plugin) is the one used. PYTHON names the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH="${BATCH:-16}"
REMAT="${REMAT:-none}"
CONFIG="${CONFIG:-experiments/progressive.py:354m}"
SPEC_PEAK_TFLOPS="${SPEC_PEAK_TFLOPS:-989}"
OUT="${OUT:-gpu_step.json}"
PYTHON="${PYTHON:-python3}"
if [[ -n "${CHECK:-}" ]]; then
  exec "$PYTHON" -m tokenformer_jax.main --mode=compile --config="$CONFIG" --topology="$CHECK" \
    --config.train.batch_size="$BATCH" --config.model.remat="$REMAT" --config.model.dtype=bfloat16
fi
if [[ -n "${WHEELS:-}" ]]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  if (( ${#wheels[@]} == 0 )); then
    echo "error: WHEELS=$WHEELS holds no .whl files" >&2
    exit 2
  fi
  site="$(mktemp -d)"
  trap 'rm -rf "$site"' EXIT
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  # read back through the interpreter, so this line shows what the runs below will import
  "$PYTHON" -c 'import importlib.metadata as m, sys
names = sys.argv[1:]
print("from WHEELS: " + ", ".join(f"{n} {m.version(n)}" for n in names))' \
    $(basename -a "${wheels[@]}" | cut -d- -f1)
fi
"$PYTHON" -c 'import jax, sys
print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
if jax.default_backend() != "gpu":
  print(f"warning: JAX backend is {jax.default_backend()}, not gpu; the figures will not be GPU "
        "figures", file=sys.stderr)'
"$PYTHON" benchmarks/step.py --config="$CONFIG" --kinds=tokenformer \
  --config.train.batch_size="$BATCH" --config.model.remat="$REMAT" --config.model.dtype=bfloat16 \
  --peak_dtype=bfloat16 --peak_size=8192 --spec_peak_tflops="$SPEC_PEAK_TFLOPS" \
  --steps=10 --warmup=3 --json="$OUT" "$@"
"$PYTHON" benchmarks/pattention_cost.py --config="$CONFIG" --config.train.batch_size="$BATCH" \
  --dtype=bfloat16 --steps="${COST_STEPS:-10}" --json="${OUT%.json}_pattention.json"
