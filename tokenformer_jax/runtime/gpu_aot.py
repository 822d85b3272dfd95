"""Compile-only NVIDIA GPU topologies for `--mode=compile`: H100, H200 and A100 nodes on a machine with no GPU.

`--topology=h100:8` (one node of 8 GPUs) or `h100:2x8` (2 hosts of 8) gives aot.py compile-only devices
made by JAX's CUDA plugin from a GPU description in `gpu_specs/` (an XLA GpuTargetConfigProto written from
the chip's published facts). XLA then runs its whole GPU pipeline (Triton GEMM fusions, ptxas, SPMD
partitioning, cuDNN custom calls) without a device, and its buffer assignment gives the bytes per device.

Two things a real GPU has that the compile does not show, and which the fit here accounts for:
- JAX's allocator owns only a fraction of the device memory (XLA_CLIENT_MEM_FRACTION, default 75%); the
  rest holds the CUDA context, cuBLAS/cuDNN handles and NCCL's buffers. A program must fit that pool.
- Without a device XLA does not build cuDNN's attention graphs, so their workspace reads 0 bytes. cuDNN's
  flash-attention backward (cuDNN 9, not deterministic) takes a float32 dQ accumulator and a float32
  softmax row sum in its workspace: B·N·T·(H + 1)·4 bytes per call, at most one call live at a time (the
  layers run in a scanned loop). That is added to the program's bytes.
GEMM autotuning is skipped too (a device would time cuBLAS against Triton); cuBLAS's workspace is not
counted. The figure is therefore a lower bound of what the step takes.
"""
import dataclasses
import functools
import importlib.resources
import importlib.util
import os
import re
import shutil

from tokenformer_jax.errors import UserError

# The chips, and the file in gpu_specs/ that describes each to XLA (sources: gpu_specs/README.md).
SPEC_FILES = {'h100': 'h100_sxm.txtpb', 'h200': 'h200_sxm.txtpb', 'a100-80g': 'a100_sxm_80gb.txtpb'}
GPUS_PER_HOST_MAX = 8            # an HGX board: the GPUs one NVLink switch joins
DEFAULT_MEM_FRACTION = 0.75      # JAX's default XLA_CLIENT_MEM_FRACTION
INSTALL = "pip install -e '.[gpu-compile]'"
CUDNN_INSTALL = "pip install --no-deps 'nvidia-cudnn-cu12>=9.8,<10'"
_TOPOLOGY_RE = re.compile(r'^(' + '|'.join(map(re.escape, SPEC_FILES)) + r'):(?:([1-9]\d*)x)?([1-9]\d*)$')
_MEMORY_RE = re.compile(r'^\s*device_memory_size:\s*(\d+)', re.MULTILINE)
_CUDNN_FMHA = '__cudnn$fmha'
# The first array of a cuDNN attention backward call's result is dQ: `(bf16[B,N,T,H]{...}, ...)`.
_FMHA_BACKWARD_RE = re.compile(r'= \((\w+)\[(\d+),(\d+),(\d+),(\d+)\][^\n]*custom_call_target="__cudnn\$fmha'
                               r'\w*Backward"')


@dataclasses.dataclass(frozen=True)
class GpuTopology:
  chip: str                    # h100 | h200 | a100-80g
  hosts: int
  gpus_per_host: int

  @property
  def name(self) -> str:
    hosts = f'{self.hosts}x' if self.hosts > 1 else ''
    return f'{self.chip}:{hosts}{self.gpus_per_host}'

  @property
  def num_chips(self) -> int:
    return self.hosts * self.gpus_per_host

  @property
  def pjrt_name(self) -> str:
    """The CUDA plugin's spelling: partitions x hosts per partition x devices per host."""
    return f'1x{self.hosts}x{self.gpus_per_host}'


def is_gpu_topology(text: str) -> bool:
  """Whether --topology names one of our GPUs (the rest is left to the TPU parser and its errors)."""
  return (text or '').strip().split(':', 1)[0] in SPEC_FILES


def parse_topology(text: str) -> GpuTopology:
  """'h100:8', 'h200:1', 'h100:2x8' (hosts x GPUs per host) → GpuTopology; anything else a UserError."""
  match = _TOPOLOGY_RE.match((text or '').strip())
  if not match:
    raise UserError(f'unknown or malformed --topology={text!r}: expected GPU:N or GPU:HOSTSxN with GPU one '
                    f'of {", ".join(SPEC_FILES)} and N GPUs per host (e.g. h100:8, h100:2x8)')
  chip, hosts, per_host = match.groups()
  if int(per_host) > GPUS_PER_HOST_MAX:
    raise UserError(f'--topology={text}: {per_host} GPUs per host; a host has at most '
                    f'{GPUS_PER_HOST_MAX} (write more as hosts: {chip}:{-(-int(per_host) // 8)}x8)')
  return GpuTopology(chip, int(hosts or 1), int(per_host))


def spec_text(chip: str) -> str:
  """The GpuTargetConfigProto text of `chip` (a file shipped in the package)."""
  return importlib.resources.files('tokenformer_jax.runtime').joinpath('gpu_specs', SPEC_FILES[chip]).read_text()


def device_memory(chip: str) -> int:
  """Bytes of device memory CUDA reports for `chip`: read from its spec, so that the compiler and the
  fit see one number."""
  return int(_MEMORY_RE.search(spec_text(chip)).group(1))


def memory_fraction() -> float:
  """The share of device memory JAX's allocator will own on the GPU machine, as JAX reads it there: from
  XLA_CLIENT_MEM_FRACTION (or the older XLA_PYTHON_CLIENT_MEM_FRACTION) in this environment, else 75%."""
  for name in ('XLA_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_MEM_FRACTION'):
    value = os.environ.get(name, '')
    if value:
      try:
        fraction = float(value)
      except ValueError:
        fraction = -1.0
      if not 0 < fraction <= 1:
        raise UserError(f'{name}={value!r}: expected a fraction in (0, 1]')
      return fraction
  return DEFAULT_MEM_FRACTION


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:      # its parent package is absent
    return False


def compiler_installed() -> bool:
  """Whether JAX's CUDA plugin (XLA:GPU) is installed: what every GPU compile needs."""
  return _installed('jax_plugins.xla_cuda12')


def _require_compiler() -> None:
  if not compiler_installed():
    raise UserError(f'--topology for a GPU needs the CUDA plugin of JAX (XLA:GPU, usable without a GPU): '
                    f'{INSTALL}')
  if not _installed('nvidia.cuda_nvcc') and shutil.which('ptxas') is None:
    raise UserError(f'--topology for a GPU needs ptxas (CUDA\'s assembler, from nvidia-cuda-nvcc-cu12): '
                    f'{INSTALL}')


def topology_devices(topology: GpuTopology) -> list:
  """Compile-only devices of `topology`, one per GPU, process_index = host."""
  _require_compiler()
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  return list(topologies.get_topology_desc(platform='cuda', topology=topology.pjrt_name,
                                           target_config=spec_text(topology.chip)).devices)


def cudnn_loadable() -> bool:
  """Whether cuDNN answers JAX's version check. JAX lowers `implementation='cudnn'` attention only after
  asking it, even when it only compiles; without it that is a RuntimeError deep in tracing. So this
  traces one tiny cuDNN attention (no device, no compile) and sees whether JAX accepts it: the same
  check, through public API, with the cuDNN copy JAX's CUDA plugin would load."""
  if not compiler_installed():
    return False
  import jax  # pylint: disable=import-outside-toplevel
  x_BxTxNxH = jax.ShapeDtypeStruct((1, 8, 1, 64), 'bfloat16')
  attend = functools.partial(jax.nn.dot_product_attention, implementation='cudnn')
  try:
    jax.jit(attend).trace(x_BxTxNxH, x_BxTxNxH, x_BxTxNxH)
  except RuntimeError:
    return False
  return True


def require_cudnn() -> None:
  if not cudnn_loadable():
    raise UserError(f'attention_impl=cudnn (the GPU default in bfloat16) needs the cuDNN library for JAX\'s '
                    f'version check: {CUDNN_INSTALL} (716 MB), or compile with '
                    '--config.model.attention_impl=xla')


def cudnn_attention_calls(hlo_text: str) -> int:
  """cuDNN fused-attention custom calls (forward and backward) in compiled HLO: static count."""
  return hlo_text.count(f'custom_call_target="{_CUDNN_FMHA}')


def cudnn_workspace_bytes(hlo_text: str) -> int:
  """The largest cuDNN attention-backward workspace of the program: the float32 dQ accumulator and
  softmax row sum (B·N·T·(H + 1)·4 bytes) that cuDNN asks for on a device and a compile-only run
  records as 0 (its u8[0] workspace operand)."""
  sizes = [b * n * t * (h + 1) * 4 for b, n, t, h in
           (map(int, m.groups()[1:]) for m in _FMHA_BACKWARD_RE.finditer(hlo_text))]
  return max(sizes, default=0)
