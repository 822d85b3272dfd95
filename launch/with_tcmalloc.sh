#!/usr/bin/env bash
# Runs a command with tcmalloc as its host allocator (LD_PRELOAD), for CPU training and benchmarks.
#
#   launch/with_tcmalloc.sh python -m tokenformer_jax.main --config=experiments/tiny.py --workdir=/tmp/t
#   launch/with_tcmalloc.sh python benchmarks/step.py --config=experiments/bench.py:b
#
# Why: on CPU, XLA allocates each step's temporaries (all activations) afresh; glibc serves a block that
# large with a fresh mmap, so every step first-touches (page-faults and zeroes) all of it again. tcmalloc
# keeps freed memory for reuse, so the page faults stop after the first steps; the peak then stays
# resident. On GPU and TPU the activations live on the device and this changes nothing. It is opt-in:
# the library never sets LD_PRELOAD itself, and every child of the command inherits it.
# Install: apt install libtcmalloc-minimal4 (Debian/Ubuntu). TCMALLOC=PATH names the library instead.
set -euo pipefail
if [[ $# == 0 ]]; then echo "error: pass the command to run" >&2; exit 2; fi
library="${TCMALLOC:-}"
if [[ -z "$library" ]]; then
  for name in libtcmalloc_minimal.so.4 libtcmalloc.so.4 libtcmalloc_minimal.so libtcmalloc.so; do
    library=$(/sbin/ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n {print $NF; exit}')
    [[ -n "$library" ]] && break
  done
fi
if [[ -z "$library" || ! -f "$library" ]]; then
  echo "error: no tcmalloc library found${TCMALLOC:+ at $TCMALLOC} (apt install libtcmalloc-minimal4)" >&2
  exit 2
fi
export LD_PRELOAD="$library${LD_PRELOAD:+ $LD_PRELOAD}"
exec "$@"
