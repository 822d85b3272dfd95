"""Ahead-of-time compile of the train step for a TPU or GPU topology, on any machine (no accelerator needed).

`python -m tokenformer_jax.main --mode=compile --config=experiments/pile.py:1.5b --topology=v5p:2x2x1`
builds compile-only TPU devices for the topology (libtpu supplies the compiler; `--topology=h100:8` and
the other GPUs of gpu_aot.py get theirs from JAX's CUDA plugin), lays the config's mesh over them and
compiles the very function the trainer runs (`step.make_train_step`) on abstract inputs. What comes back
answers "will this run fit, and what will it communicate" before any accelerator is rented: the
per-device memory from XLA's buffer assignment against what the program may use of the chip's memory,
and the collectives in the compiled HLO. Nothing is allocated and no tokenizer is needed.
"""
import dataclasses
import importlib.util
import math
import os
import re
import time

import jax
import jax.numpy as jnp

from tokenformer_jax import config as config_lib
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import gpu_aot
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import state as state_lib
from tokenformer_jax.training import step

GIB = 1024 ** 3
# HBM per chip (one JAX device: v4 and v5p run their two TensorCores as one megacore device).
HBM_GIB = {'v4': 32, 'v5e': 16, 'v5p': 95, 'v6e': 32}
# The name Cloud TPU gives a slice of n chips (v4 and v5p count TensorCores, two per chip).
_ACCELERATOR_TYPE = {'v4': 'v4-{}', 'v5e': 'v5litepod-{}', 'v5p': 'v5p-{}', 'v6e': 'v6e-{}'}
_CORES_PER_CHIP = {'v4': 2, 'v5e': 1, 'v5p': 2, 'v6e': 1}
LIBTPU_PIN = 'libtpu==0.0.42.*'   # the version jax 0.10.2's `tpu` extra pins
COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')
# A collective instruction: `= TYPE op(` or, for an async pair, `op-start(` (the `-done` half is not counted).
_COLLECTIVE_RE = re.compile(r' = .*?\s(' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')
_CHANNEL_RE = re.compile(r'channel_id=(\d+)')
_TOPOLOGY_RE = re.compile(r'^(v4|v5e|v5p|v6e):([1-9]\d*)x([1-9]\d*)(?:x([1-9]\d*))?$')


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: str                    # v4 | v5e | v5p | v6e
  dims: tuple[int, ...]        # chips along x, y (and z)

  @property
  def name(self) -> str:
    return f'{self.chip}:{"x".join(map(str, self.dims))}'

  @property
  def num_chips(self) -> int:
    return math.prod(self.dims)


def parse_topology(text: str) -> Topology:
  """'v5e:4x4', 'v5p:2x2x1', ... → Topology; anything else is a UserError naming the format."""
  match = _TOPOLOGY_RE.match((text or '').strip())
  if not match:
    raise UserError(f'unknown or malformed --topology={text!r}: expected CHIP:XxY[xZ] with CHIP one of '
                    f'{", ".join(HBM_GIB)} (e.g. v5e:4x4, v5p:2x2x1), or GPU:N or GPU:HOSTSxN with GPU one of '
                    f'{", ".join(gpu_aot.SPEC_FILES)} (e.g. h100:8, h100:2x8)')
  chip, *dims = match.groups()
  return Topology(chip, tuple(int(d) for d in dims if d))


def _require_libtpu() -> None:
  if importlib.util.find_spec('libtpu') is None and not os.environ.get('TPU_LIBRARY_PATH'):
    raise UserError(f"--mode=compile needs libtpu (the TPU compiler): pip install '{LIBTPU_PIN}' "
                    "(or pip install -e '.[tpu]')")


def topology_devices(topology: Topology) -> list:
  """Compile-only devices of one slice of this topology, one per chip."""
  _require_libtpu()
  if os.environ.get('TPU_SKIP_MDS_QUERY') == '1':
    # jax sets this when the machine has no TPU chips. libtpu then cannot discover the slice it runs on
    # and says so in five lines on stderr that have nothing to do with compiling: name one instead. Its
    # one-process-per-machine lockfile guards chips there are none of here: a second compile (another
    # test process, a second terminal) must not be refused.
    cores = topology.num_chips * _CORES_PER_CHIP[topology.chip]
    os.environ.setdefault('TPU_ACCELERATOR_TYPE', _ACCELERATOR_TYPE[topology.chip].format(cores))
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # loads the TPU plugin: only once libtpu is known present
  # libtpu's default host is 2x2x1 chips; a smaller slice (v5e:1x1) is one smaller host.
  dims_xyz = topology.dims + (1,) * (3 - len(topology.dims))
  options = {'chips_per_host_bounds': tuple(min(d, h) for d, h in zip(dims_xyz, (2, 2, 1)))}
  if topology.chip == 'v4':
    options['chip_config_name'] = 'megacore'   # as deployed: one device per chip, not per core
  try:
    return list(topologies.get_topology_desc(topology.name, platform='tpu', **options).devices)
  except jax.errors.JaxRuntimeError as e:
    raise UserError(f'libtpu rejects --topology={topology.name}: {str(e).splitlines()[0]}') from e


def count_collectives(hlo_text: str) -> dict[str, int]:
  """Collectives in compiled HLO text, by kind; each counted once.

  The TPU compiler clones a collective into the fusions that overlap it with compute (all clones keep
  its channel_id), so collectives are counted by distinct channel_id; an async start/done pair counts
  once. TPU lowers a reduce-scatter to an all-reduce inside a fusion computation named
  `all-reduce-scatter...`: counted as a reduce-scatter. Counts are static: a collective inside the
  scanned layer loop appears once, however many layers run.
  """
  seen = {name: set() for name in COLLECTIVES}
  computation = ''
  for index, line in enumerate(hlo_text.splitlines()):
    if line[:1] not in ('', ' ', '}'):          # a computation header: `%name (...) -> ... {`
      computation = line.removeprefix('ENTRY ').lstrip('%').split(' ', 1)[0]
      continue
    match = _COLLECTIVE_RE.search(line)
    if not match:
      continue
    kind = match.group(1)
    if kind == 'all-reduce' and computation.startswith('all-reduce-scatter'):
      kind = 'reduce-scatter'
    channel = _CHANNEL_RE.search(line)
    seen[kind].add(channel.group(1) if channel else f'line {index}')
  return {name: len(ids) for name, ids in seen.items()}


def _shard_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (layout padding not counted)."""
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
             for a in jax.tree.leaves(abstract_tree))


def _advice(result: dict) -> str:
  """What to change so that the step needs less memory per device, from the run's own settings."""
  steps = []
  if result['micro_batch_per_device'] > 1:
    steps.append(f'raise train.grad_accum (now {result["grad_accum"]}: {result["micro_batch_per_device"]:g} '
                 'sequences per device per micro-batch)')
  if result['remat'] == 'none':
    steps.append('model.remat=block (recompute each block in the backward pass)')
  if result['mesh_shape']['data'] > 1:
    steps.append(f'shard parameters and optimizer state over all devices (mesh.data=1 mesh.fsdp=-1; the '
                 f'data axis of {result["mesh_shape"]["data"]} replicates them)')
  steps.append('or use more chips' if steps else 'use more chips')
  return '; '.join(steps)


def _where(result: dict) -> str:
  return f'{result["budget_note"]} of {result["chip"]}'


def _out_of_memory(message: str, arguments: int, setup: dict) -> UserError:
  """The compiler's own refusal as a `does not fit`.

  The TPU compiler refuses a program whose temporaries alone exceed the HBM (arguments are not part of
  that check: `check_fits` catches the rest), naming the size it needed.
  """
  where = f'mesh {setup["mesh_shape"]}; to fit: {_advice(setup)}'
  temps = re.search(r'HLO temporaries \(([\d.]+)([KMGT])\)', message)
  to_gib = lambda number, unit: float(number) * 1024 ** ('KMGT'.index(unit) + 1) / GIB
  if temps:
    total = to_gib(*temps.groups()) + arguments / GIB
    return UserError(f'does not fit: {total:.2f} GiB per device ({to_gib(*temps.groups()):.2f} GiB '
                     f'temporaries + {arguments / GIB:.2f} GiB arguments) > {_where(setup)} ({where})')
  return UserError(f'does not fit in the {_where(setup)}: {message.splitlines()[0]} ({where})')


def _devices(topology: str) -> tuple[dict, list]:
  """The chip's facts for the report and the compile-only devices of `topology` (TPU or GPU)."""
  if gpu_aot.is_gpu_topology(topology):
    topo = gpu_aot.parse_topology(topology)
    device_memory, fraction = gpu_aot.device_memory(topo.chip), gpu_aot.memory_fraction()
    facts = {'platform': 'gpu', 'hbm': device_memory, 'budget': int(fraction * device_memory),
             'budget_note': f"{fraction * device_memory / GIB:.2f} GiB (JAX's {fraction:.0%} of "
                            f'{device_memory / GIB:.2f} GiB)', 'hosts': topo.hosts}
    return {'topology': topo.name, 'chip': topo.chip, **facts}, gpu_aot.topology_devices(topo)
  topo = parse_topology(topology)
  hbm = HBM_GIB[topo.chip] * GIB
  facts = {'platform': 'tpu', 'hbm': hbm, 'budget': hbm, 'budget_note': f'{HBM_GIB[topo.chip]:g} GiB HBM'}
  return {'topology': topo.name, 'chip': topo.chip, **facts}, topology_devices(topo)


def _lower(spec, cfg, targets, tokens, platform: str):
  """The train step lowered for the topology; JAX's own refusals of GPU attention as UserErrors."""
  if platform == 'gpu' and spec.model_cfg.attention_impl == 'cudnn':
    gpu_aot.require_cudnn()
  try:
    return step.make_train_step(spec, cfg).lower(targets, tokens)
  except NotImplementedError as e:
    if platform != 'gpu':
      raise
    # JAX asks a live device for Hopper features: a compile-only target counts as pre-Hopper
    raise UserError(f'JAX refuses attention_impl={spec.model_cfg.attention_impl} here: '
                    f'{str(e).splitlines()[0]} (without a GPU attached JAX applies its pre-Hopper limits, '
                    'which an A100 has too and an H100 or H200 may not); check the memory with '
                    '--config.model.attention_impl=xla') from None


def compile_train_step(cfg, topology: str) -> dict:
  """Compiles the train step for `topology`; returns what `format_report` prints (sizes in bytes).

  Raises UserError `does not fit: ...` when the TPU compiler itself refuses the program for the HBM.
  """
  config_lib.validate(cfg)
  result, devices = _devices(topology)
  mesh = sharding.make_mesh(cfg.mesh, devices=devices)
  spec = state_lib.make_spec(cfg, config_lib.padded_vocab(cfg.model, cfg.data.vocab_size), mesh)
  targets = state_lib.abstract_targets(spec)
  tokens = jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.data.seq_len + 1), jnp.int32,
                                sharding=sharding.batch_sharding(mesh, cfg.sharding_rules, 2))
  result.update({
      'device_kind': devices[0].device_kind,
      'num_devices': len(devices),
      'mesh_shape': dict(mesh.shape),
      'num_params': state_lib.num_params(spec),
      'batch_size': cfg.train.batch_size,
      'grad_accum': cfg.train.grad_accum,
      'seq_len': cfg.data.seq_len,
      'remat': spec.model_cfg.remat,
      'dtype': spec.model_cfg.dtype,
      # rows of one micro-batch on a device: the batch is split over the 'batch' rule's mesh axes only
      'micro_batch_per_device': tokens.sharding.shard_shape(tokens.shape)[0] / cfg.train.grad_accum,
      'attention_impl': spec.model_cfg.attention_impl,
  })
  start = time.perf_counter()
  lowered = _lower(spec, cfg, targets, tokens, result['platform'])
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    raise _out_of_memory(str(e), _shard_bytes((targets, tokens)), result) from None
  result['compile_s'] = time.perf_counter() - start
  hlo_text = compiled.as_text()
  result['memory'] = _memory(compiled.memory_analysis(), hlo_text, result['platform'])
  result['collectives'] = count_collectives(hlo_text)
  # Pallas TPU kernels (splash attention: its forward and two backward kernels) are Mosaic custom calls;
  # cuDNN's fused attention (forward and backward) is a custom call of its own
  result['pallas_kernels'] = hlo_text.count('custom_call_target="tpu_custom_call"')
  result['cudnn_attention_calls'] = gpu_aot.cudnn_attention_calls(hlo_text)
  return result


def _memory(stats, hlo_text: str, platform: str) -> dict:
  """Bytes per device from XLA's buffer assignment, plus what a GPU adds that the compile cannot see."""
  memory = {
      'arguments': stats.argument_size_in_bytes,
      'outputs': stats.output_size_in_bytes,
      'aliased': stats.alias_size_in_bytes,          # outputs written into donated arguments
      'temporaries': stats.temp_size_in_bytes,
      'generated_code': stats.generated_code_size_in_bytes,
      'cudnn_workspace': gpu_aot.cudnn_workspace_bytes(hlo_text) if platform == 'gpu' else 0,
  }
  # XLA's own live-range peak; for small programs it may report 0 temporaries yet a real peak, so the
  # total is the larger of the two accounts.
  memory['peak'] = getattr(stats, 'peak_memory_in_bytes', 0)
  memory['total'] = max(memory['arguments'] + memory['outputs'] - memory['aliased']
                        + memory['temporaries'] + memory['generated_code'],
                        memory['peak']) + memory['cudnn_workspace']
  return memory


def format_report(result: dict) -> str:
  """The human-readable report of `compile_train_step`'s result (what --mode=compile prints)."""
  gib = lambda n: f'{n / GIB:8.3f} GiB'
  mem = result['memory']
  mesh = ' x '.join(f'{name} {size}' for name, size in result['mesh_shape'].items())
  hosts = f', {result["hosts"]} hosts' if result.get('hosts', 1) > 1 else ''
  gpu = result['platform'] == 'gpu'
  lines = [
      f'topology      {result["topology"]} ({result["device_kind"]}, {result["num_devices"]} '
      f'device{"s" if result["num_devices"] > 1 else ""}{hosts})',
      f'mesh          {mesh}',
      f'model         {result["num_params"] / 1e6:,.1f}M parameters; batch {result["batch_size"]} x '
      f'{result["seq_len"]} tokens, grad_accum {result["grad_accum"]} '
      f'({result["micro_batch_per_device"]:g} sequences per device per micro-batch); {result["dtype"]}, '
      f'remat {result["remat"]}',
      f'compiled in   {result["compile_s"]:.1f} s',
      'memory per device:',
      f'  arguments   {gib(mem["arguments"])}',
      f'  outputs     {gib(mem["outputs"])}',
      f'  aliased     {gib(mem["aliased"])}   (outputs in donated arguments)',
      f'  temporaries {gib(mem["temporaries"])}',
      f'  code        {gib(mem["generated_code"])}',
      f'  peak (XLA)  {gib(mem["peak"])}   (XLA live-range peak)',
  ]
  if gpu:
    lines.append(f'  cuDNN ws    {gib(mem["cudnn_workspace"])}   (attention backward workspace a GPU adds; '
                 'GEMM autotuning not run: a lower bound)')
  lines += [
      f'  total       {gib(mem["total"])}   of {result["budget_note"]} '
      f'({100 * mem["total"] / result["budget"]:.0f}%)',
      'collectives in the compiled HLO (static count; a loop body counts once):',
      '  ' + ', '.join(f'{name} {count}' for name, count in result['collectives'].items()),
  ]
  kernels = (f'{result["cudnn_attention_calls"]} cuDNN fused-attention' if gpu
             else f'{result["pallas_kernels"]} Pallas kernel')
  lines.append(f'attention     {result["attention_impl"]} ({kernels} calls in the compiled HLO, static count)')
  return '\n'.join(lines)


def check_fits(result: dict) -> None:
  """UserError when the step's bytes per device exceed what it may use (the TPU's HBM; on a GPU, JAX's
  share of the device memory): the TPU compiler checks the temporaries alone and lets such a program
  through, XLA:GPU only warns; either would fail at its first step."""
  total = result['memory']['total']
  if total > result['budget']:
    raise UserError(f'does not fit: {total / GIB:.2f} GiB per device > {_where(result)} (mesh '
                    f'{result["mesh_shape"]}, batch {result["batch_size"]}, grad_accum '
                    f'{result["grad_accum"]}); to fit: {_advice(result)}')


def run(cfg, topology: str) -> None:
  """The --mode=compile entry point: compile, print the report, fail if it does not fit."""
  if not topology:
    raise UserError('--mode=compile needs --topology (e.g. --topology=v5p:2x2x1, v5e:4x4 or h100:8)')
  # Nothing runs here: keep jax's own backend on the CPU, so that it neither waits for nor takes a local
  # accelerator (one a training job may be holding). The CUDA plugin then skips its check of the CUDA
  # libraries, which a machine without a GPU may lack.
  jax.config.update('jax_platforms', 'cpu')
  result = compile_train_step(cfg, topology)
  print(format_report(result), flush=True)
  check_fits(result)
