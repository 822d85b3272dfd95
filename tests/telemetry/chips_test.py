"""The MFU denominator: datasheet peaks by device kind, an override, and no invented peak for a CPU."""
import types

import pytest

from tokenformer_jax.telemetry import chips


@pytest.mark.parametrize('kind,tflops', [
    ('TPU v4', 275.0), ('TPU v5 lite', 197.0), ('TPU v5e', 197.0), ('TPU v5', 459.0), ('TPU v5p', 459.0),
    ('TPU v6 lite', 918.0), ('NVIDIA H100 80GB HBM3', 989.0), ('NVIDIA H100 PCIe', 756.0),
    ('NVIDIA H200', 989.0), ('NVIDIA A100-SXM4-80GB', 312.0), ('cpu', None), ('NVIDIA T4', None)])
def test_datasheet_peaks(kind, tflops):
  assert chips.datasheet_tflops(kind) == tflops


def test_peak_of_all_devices_an_override_and_none_on_cpu():
  four_v5e = [types.SimpleNamespace(device_kind='TPU v5 lite')] * 4
  assert chips.peak_flops(devices=four_v5e)[0] == pytest.approx(4 * 197e12)
  assert chips.peak_flops(100.0, four_v5e) == (pytest.approx(4 * 100e12), 'train.peak_tflops=100 per chip')
  peak, why = chips.peak_flops()   # this process's CPU devices
  assert peak is None and "device kind 'cpu'" in why and 'train.peak_tflops' in why
