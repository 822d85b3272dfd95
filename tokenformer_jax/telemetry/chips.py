"""Datasheet peaks of the accelerators a run may land on: the denominator of the MFU a run logs.

The figures are dense bf16 matmul TFLOP/s per chip, as the vendors publish them (sparsity not counted),
which is the usual MFU convention whatever dtype the model computes in. JAX's `device_kind` names the chip:
'TPU v5 lite' is v5e, 'TPU v5' is v5p, 'TPU v6 lite' is v6e (Trillium). A CPU has no such figure: the run
then logs no MFU rather than one against an invented peak (`train.peak_tflops` sets one by hand).
"""
import jax

# (device_kind substring, TFLOP/s), most specific first: the first substring found in the kind wins.
DATASHEET_TFLOPS = (
    ('TPU v6 lite', 918.0),
    ('TPU v6e', 918.0),
    ('TPU v5 lite', 197.0),
    ('TPU v5e', 197.0),
    ('TPU v5p', 459.0),
    ('TPU v5', 459.0),
    ('TPU v4', 275.0),
    ('H200', 989.0),
    ('H100 PCIe', 756.0),
    ('H100', 989.0),            # SXM
    ('A100', 312.0),
)


def datasheet_tflops(device_kind: str) -> float | None:
  """The chip's dense bf16 peak, or None for a kind the table does not know (a CPU, say)."""
  for name, tflops in DATASHEET_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops
  return None


def peak_flops(override_tflops: float = 0.0, devices=None) -> tuple[float | None, str]:
  """(peak FLOP/s of all the run's devices together, where the figure comes from); (None, why) when no
  peak is known. `override_tflops` > 0 (train.peak_tflops) is the per-chip peak to use instead."""
  devices = devices if devices is not None else jax.devices()
  kind = devices[0].device_kind
  if override_tflops > 0:
    return override_tflops * 1e12 * len(devices), f'train.peak_tflops={override_tflops:g} per chip'
  tflops = datasheet_tflops(kind)
  if tflops is None:
    return None, (f'no datasheet peak for device kind {kind!r}: no MFU is logged '
                  '(set train.peak_tflops to log one)')
  return tflops * 1e12 * len(devices), f'{kind}: {tflops:g} TFLOP/s per chip (dense bf16 datasheet)'
