"""grain input pipelines over a TFDS data source (or any random-access sequence of examples).

Training (``create_train_dataset`` / ``create_train_iterator``): an infinite stream of batches.

* Order: the records are shuffled globally with ``seed``, reshuffled every epoch (grain
  ``MapDataset.shuffle(seed).repeat()``), giving a global stream of examples; global stream
  position ``g`` belongs to epoch ``g // N`` (N = number of records).
* Multi-host: process ``p`` of ``P`` reads stream positions ``p, p + P, p + 2P, ...`` — disjoint
  shards that together cover every epoch; ``batch_size`` is the *global* batch, so step ``s`` of
  every process covers global positions ``[s * batch_size, (s + 1) * batch_size)`` and the epoch of
  step ``s`` is ``s * batch_size // N`` (what ``drd_jax.losses.vtce_temperature`` assumes).
* Augmentation (``drd_jax.data.transforms.train_transform``): random scale in ``scale_range`` (image
  bilinear, depth/label nearest), pad-and-crop to ``crop_size`` (image padded with the mean colour,
  which normalises to 0; depth with 0 = invalid; label with 255), horizontal flip of all three,
  optional colour jitter of the RGB only. Its randomness is ``np.random.default_rng`` seeded with
  ``(seed, epoch, record index)``, so it does not depend on the order or the thread/process that
  computes an example.
* Determinism: batch ``s`` is a pure function of ``(data, seed, s, batch layout)``; starting at
  ``start_step=k`` yields exactly the batches an uninterrupted run yields from step ``k`` on,
  whatever ``num_workers`` / ``num_threads``.

Evaluation (``create_eval_dataset``): every record of the process's shard (records ``p::P``) exactly
once, in record order, full resolution, no augmentation. With ``batch_size=1`` (the default and
the paper's protocol) nothing is padded. With larger batches the examples of a batch are padded at
the bottom/right to a common size (``pad_to`` or the largest in the batch) with void labels, and
the last batch is filled with padding examples (``index == -1``, all labels void; the size of record
0 or ``pad_to``), so every process yields the same number of batches — of the same shape if all
records share one size or ``pad_to`` is given. Void pixels never count in the metrics.
Each example carries its real ``size`` (height, width) before padding; ``steps.eval_step(...,
padded=True)`` gives it to the network, whose predictions on the real part are then those of the
unpadded image. :func:`eval_pad_size` picks the canvas (the split's largest size) for a split of
mixed sizes, so that one program is compiled for them all.

Batches (numpy): ``image`` float32 (..., H, W, 3) ImageNet-normalised, ``depth`` float32
(..., H, W) metres (0 = invalid), ``label`` int32 (..., H, W) in 0..K-1 with 255 = void, ``index``
int32 (...,) record index, ``size`` int32 (..., 2) real (height, width) (evaluation only), plus
``raw_image`` uint8 (..., H, W, 3) if ``include_raw_image``. The
leading axes ``...`` are ``(per_process_batch,)`` for ``jax.jit`` (``num_devices=None``) or
``(num_devices, per_process_batch // num_devices)`` for ``jax.pmap``.

Damaged data: :func:`check_readable` (the trainer calls it for train and test before step 0, and
before it writes anything) decodes the first and last record of every shard of a split, then
reads the stored bytes of every record, which array_record checks against the hash stored with
each chunk (:func:`verify_records`: 1-4 s per GB on a 2-core VM, 3-10 s for all of NYUv2 and
4-22 s for SUN RGB-D, see BENCHMARKS.md). A missing, truncated, overwritten or bit-flipped
shard anywhere in a split therefore raises :class:`CorruptDataError` before step 0: one line
naming the shard file, the record and the builder's command that rebuilds the dataset
(``python -m tfds_builders.build ... --overwrite``). A record that fails later anyway (damaged
after the check) raises the same one-line error from the training stream, the evaluation pass
and :func:`eval_pad_size`, not the reader's traceback; so does a ``dataset_info.json`` that does
not load (:func:`load_data_source`).

Example::

    train_source = load_data_source("synthetic_rgbd/tiny", "train", data_dir=d, prepare=True)
    it = create_train_iterator(train_source, batch_size=8, crop_size=(48, 64), num_classes=6,
                               seed=0, num_devices=jax.local_device_count())
    batch = next(it)  # batch["image"].shape == (ndev, 8 // ndev, 48, 64, 3)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import pathlib
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from drd_jax.data import transforms
from drd_jax.errors import ConfigError, DataError
from drd_jax.extras import require

grain = require("grain", extra="data")

__all__ = [
    "IGNORE_LABEL",
    "CorruptDataError",
    "DataCheck",
    "EvalDataset",
    "augmentation_rng",
    "check_readable",
    "create_eval_dataset",
    "create_train_dataset",
    "create_train_iterator",
    "dataset_class_names",
    "eval_pad_size",
    "load_data_source",
    "read_record",
    "rebuild_command",
    "steps_per_epoch",
    "verify_records",
]

IGNORE_LABEL = transforms.IGNORE_LABEL
_AUGMENT_STREAM = 0x5EED  # decorrelates augmentation randomness from other uses of the seed


# ----------------------------------------------------------------------------------------------
# Argument checks (clear errors naming the argument).


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_layout(
    batch_size, num_devices, process_index, process_count
) -> tuple[int, int | None, int, int]:
    """Returns (per_process_batch, num_devices, process_index, process_count)."""
    process_count = _check_int("process_count", process_count, 1)
    process_index = _check_int("process_index", process_index, 0, process_count - 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    if num_devices is not None:
        num_devices = _check_int("num_devices", num_devices, 1)
    per_process, rem = divmod(batch_size, process_count)
    if rem:
        raise ValueError(
            f"batch_size={batch_size} (global) must be divisible by process_count={process_count}"
        )
    if num_devices is not None and per_process % num_devices:
        raise ValueError(
            f"batch_size={batch_size} must be divisible by process_count * num_devices "
            f"= {process_count * num_devices}"
        )
    return per_process, num_devices, process_index, process_count


def _check_source(data_source) -> int:
    try:
        n = len(data_source)
    except TypeError:
        raise ValueError(
            "data_source must be a random-access data source (len() and [i]), "
            f"got {type(data_source).__name__}"
        ) from None
    if n == 0:
        raise DataError("data_source is empty")
    return n


# ----------------------------------------------------------------------------------------------
# grain transforms (module-level classes: picklable for mp_prefetch workers).


@dataclasses.dataclass(frozen=True)
class _AttachRecordIndex(grain.transforms.MapWithIndex):
    num_records: int

    def map_with_index(self, index: int, element):
        return int(index) % self.num_records, element


@dataclasses.dataclass(frozen=True)
class _TrainAugment(grain.transforms.MapWithIndex):
    """Stream position g -> augmented example; randomness from (seed, epoch, record index)."""

    num_records: int
    seed: int
    num_classes: int
    crop_size: tuple[int, int]
    scale_range: tuple[float, float]
    flip_prob: float
    color_jitter: float
    include_raw_image: bool

    def map_with_index(self, index: int, element):
        record, example = element
        epoch = int(index) // self.num_records
        rng = augmentation_rng(self.seed, epoch, record)
        out = transforms.train_transform(
            example,
            rng,
            num_classes=self.num_classes,
            crop_size=self.crop_size,
            scale_range=self.scale_range,
            flip_prob=self.flip_prob,
            color_jitter_strength=self.color_jitter,
            include_raw_image=self.include_raw_image,
        )
        out["index"] = np.int32(record)
        out["size"] = np.asarray(out["depth"].shape, np.int32)
        return _select(out)


def augmentation_rng(seed: int, epoch: int, record_index: int) -> np.random.Generator:
    """The generator that draws the augmentation of record ``record_index`` in ``epoch``."""
    return np.random.default_rng([_AUGMENT_STREAM, seed, epoch, record_index])


_KEYS = ("image", "depth", "label", "index", "size", "raw_image")


def _select(example: dict) -> dict:
    return {k: example[k] for k in _KEYS if k in example}


@dataclasses.dataclass(frozen=True)
class _Stack:
    """batch_fn: stack examples (padding them to a common size first if needed)."""

    pad_to: tuple[int, int] | None = None

    def __call__(self, examples: Sequence[dict]) -> dict:
        shapes = {ex["depth"].shape for ex in examples}
        if self.pad_to is not None or len(shapes) > 1:
            size = self.pad_to or tuple(np.max([s for s in shapes], axis=0))
            examples = [transforms.pad_to(ex, size) for ex in examples]
        return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


@dataclasses.dataclass(frozen=True)
class _DeviceAxis(grain.transforms.Map):
    """(B, ...) -> (num_devices, B // num_devices, ...)."""

    num_devices: int | None

    def map(self, batch: dict) -> dict:
        if self.num_devices is None:
            return batch
        return {
            k: v.reshape((self.num_devices, v.shape[0] // self.num_devices) + v.shape[1:])
            for k, v in batch.items()
        }


@dataclasses.dataclass(frozen=True)
class _EvalLoad(grain.transforms.Map):
    """Record index (or -1 for padding) -> finalised full-resolution example."""

    data_source: Any
    num_classes: int
    include_raw_image: bool
    padding_size: tuple[int, int]

    def map(self, record: int) -> dict:
        record = int(record)
        if record < 0:  # padding example: void labels, invalid depth, mean colour
            h, w = self.padding_size
            out = {
                "image": np.zeros((h, w, 3), np.float32),
                "depth": np.zeros((h, w), np.float32),
                "label": np.full((h, w), IGNORE_LABEL, np.int32),
            }
            if self.include_raw_image:
                out["raw_image"] = np.empty((h, w, 3), np.uint8)
                out["raw_image"][...] = np.round(transforms.MEAN_PIXEL).astype(np.uint8)
        else:
            out = transforms.eval_transform(
                read_record(self.data_source, record),
                num_classes=self.num_classes,
                include_raw_image=self.include_raw_image,
            )
        out["index"] = np.int32(record)
        out["size"] = np.asarray(out["depth"].shape, np.int32)
        return _select(out)


# ----------------------------------------------------------------------------------------------
# Public API.


def create_train_dataset(
    data_source,
    *,
    batch_size: int,
    crop_size: Sequence[int],
    num_classes: int,
    seed: int,
    start_step: int = 0,
    num_devices: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    scale_range: Sequence[float] = (0.75, 1.75),
    flip_prob: float = 0.5,
    color_jitter: float = 0.0,
    include_raw_image: bool = False,
    num_workers: int = 0,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> grain.IterDataset:
    """The infinite training stream of batches from step ``start_step`` on (see module doc).

    Args:
      data_source: random-access source of stored examples (``image`` uint8 HxWx3, ``depth``
        float32 HxW metres, ``label`` HxW with 0 = void, 1..num_classes), e.g. a TFDS data source.
      batch_size: global batch size (all processes and devices together).
      crop_size: (height, width) of every training example.
      num_classes: K; stored labels 1..K become 0..K-1, 0 becomes 255.
      seed: shuffling and augmentation seed, 0 <= seed < 2**32.
      start_step: first step to yield (resume): batches are identical to an uninterrupted run's.
      num_devices: None for a flat (per_process_batch, ...) batch (``jax.jit``), else the size of a
        leading device axis (``jax.pmap``: usually ``jax.local_device_count()``).
      process_index, process_count: this process and the number of processes (multi-host).
      scale_range: (min, max) random scale factor relative to the stored size.
      flip_prob: probability of a horizontal flip.
      color_jitter: brightness/contrast/saturation strength on the RGB (0 = off).
      include_raw_image: also return the augmented uint8 RGB as ``raw_image``.
      num_workers: grain worker processes (0 = in this process).
      num_threads: grain reader threads per process/worker.
      prefetch_buffer_size: batches prefetched per reader.
    """
    n = _check_source(data_source)
    per_process, num_devices, process_index, process_count = _check_layout(
        batch_size, num_devices, process_index, process_count
    )
    crop_size = transforms.check_size(crop_size, "crop_size")
    num_classes = _check_int("num_classes", num_classes, 1)
    seed = _check_int("seed", seed, 0, 2**32 - 1)
    start_step = _check_int("start_step", start_step, 0)
    num_workers = _check_int("num_workers", num_workers, 0)
    num_threads = _check_int("num_threads", num_threads, 0)
    prefetch_buffer_size = _check_int("prefetch_buffer_size", prefetch_buffer_size, 0)
    try:
        lo, hi = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"scale_range must be (min, max), got {scale_range!r}") from None
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range!r}")
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
    if not 0.0 <= color_jitter < 1.0:
        raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter!r}")

    ds = grain.MapDataset.source(_CheckedSource(data_source))
    ds = ds.map_with_index(_AttachRecordIndex(n))
    ds = ds.shuffle(seed=seed).repeat()  # global stream, reshuffled every epoch
    ds = ds.map_with_index(
        _TrainAugment(
            num_records=n,
            seed=seed,
            num_classes=num_classes,
            crop_size=crop_size,
            scale_range=(lo, hi),
            flip_prob=float(flip_prob),
            color_jitter=float(color_jitter),
            include_raw_image=bool(include_raw_image),
        )
    )
    ds = ds[process_index::process_count]
    ds = ds.batch(per_process, drop_remainder=True, batch_fn=_Stack())
    ds = ds.map(_DeviceAxis(num_devices))
    ds = ds[start_step:]
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2)
        )
    return it_ds


def _ensure_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside an absl app (tests, notebooks, argparse
    # scripts) they are unparsed, which grain treats as an error: use their defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def create_train_iterator(data_source, **kwargs) -> grain.DatasetIterator:
    """``iter(create_train_dataset(data_source, **kwargs))``: an infinite iterator of batches."""
    return iter(create_train_dataset(data_source, **kwargs))


class EvalDataset:
    """Evaluation batches: ``len(ds)``, ``ds[i]`` and re-iterable ``for batch in ds``.

    Iteration reads ahead with ``num_threads`` threads and at most ``prefetch_buffer_size``
    batches (grain's default buffer of 500 full-resolution batches would hold gigabytes).
    """

    def __init__(self, batches: grain.MapDataset, read_options: grain.ReadOptions):
        self.batches = batches
        self.read_options = read_options

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        return self.batches[index % len(self)]

    def __iter__(self):
        return iter(self.batches.to_iter_dataset(self.read_options))


def create_eval_dataset(
    data_source,
    *,
    num_classes: int,
    batch_size: int = 1,
    num_devices: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    pad_to: Sequence[int] | None = None,
    include_raw_image: bool = False,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> EvalDataset:
    """Full-resolution evaluation batches: each record of this process's shard exactly once.

    Returns an ``EvalDataset``: ``len(ds)`` batches (the same on every process), iterate with
    ``for batch in ds`` (re-iterable; records in order). ``batch_size`` is global, as for
    training. Padding examples (to fill the last batch) have ``index == -1`` and only void labels.
    ``pad_to`` fixes the padded (height, width) of every batch (recommended when
    ``batch_size > 1``: one compiled shape, and the same shape on every process); without it a
    batch is padded to its largest example.
    """
    n = _check_source(data_source)
    per_process, num_devices, process_index, process_count = _check_layout(
        batch_size, num_devices, process_index, process_count
    )
    num_classes = _check_int("num_classes", num_classes, 1)
    if pad_to is not None:
        pad_to = transforms.check_size(pad_to, "pad_to")
    num_threads = _check_int("num_threads", num_threads, 0)
    prefetch_buffer_size = _check_int("prefetch_buffer_size", prefetch_buffer_size, 0)
    shard = list(range(process_index, n, process_count))
    per_process_examples = -(-n // process_count)  # the largest shard
    num_batches = -(-per_process_examples // per_process)
    shard += [-1] * (num_batches * per_process - len(shard))
    padding_size = pad_to or tuple(np.shape(data_source[0]["label"]))
    ds = grain.MapDataset.source(shard)
    ds = ds.map(_EvalLoad(data_source, num_classes, bool(include_raw_image), padding_size))
    ds = ds.batch(per_process, drop_remainder=True, batch_fn=_Stack(pad_to))
    ds = ds.map(_DeviceAxis(num_devices))
    return EvalDataset(
        ds, grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )


def eval_pad_size(
    data_source, pad_to: Sequence[int] = (0, 0), *, num_threads: int = 8
) -> tuple[int, int] | None:
    """The (height, width) canvas evaluation pads every image to, or None for no padding.

    ``pad_to`` (``config.eval_pad_to``): a positive pair is the canvas itself (nothing is read);
    ``(0, 0)`` reads every record's size (with ``num_threads`` threads) and gives the largest, or
    None when all records have one size (then nothing is padded, as before there was padding).
    Pass the result to :func:`create_eval_dataset` and, when not None, evaluate with
    ``steps.eval_step(..., padded=True)`` so that the network ignores the padding.
    """
    if pad_to is not None and tuple(pad_to) != (0, 0):
        return transforms.check_size(pad_to, "pad_to")
    n = _check_source(data_source)

    def size(index: int) -> tuple[int, int]:
        return tuple(np.shape(read_record(data_source, index)["depth"])[:2])

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        sizes = set(pool.map(size, range(n)))
    if len(sizes) == 1:
        return None
    return tuple(int(v) for v in np.max(sorted(sizes), axis=0))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training steps that see ``num_examples`` examples at a global ``batch_size`` (ceil)."""
    num_examples = _check_int("num_examples", num_examples, 1)
    return -(-num_examples // _check_int("batch_size", batch_size, 1))


def load_data_source(
    dataset: str, split: str, *, data_dir: str | None = None, prepare: bool = False
):
    """The TFDS array_record data source of ``tfds_builders.<name>`` (e.g. "synthetic_rgbd/tiny").

    ``dataset`` is ``name`` or ``name/config``. With ``prepare=True`` the dataset is built first
    if needed (only possible without manual downloads, e.g. ``synthetic_rgbd``); otherwise build it
    with ``python -m tfds_builders.build``. A built dataset whose ``dataset_info.json`` does not
    load (not JSON, cut short) raises :class:`CorruptDataError` naming that file and the command
    that rebuilds the dataset.
    """
    name, _, config = dataset.partition("/")
    try:
        module = importlib.import_module(f"tfds_builders.{name}")
    except ModuleNotFoundError as e:
        raise ConfigError(f"dataset {dataset!r}: no builder tfds_builders.{name} ({e})") from None
    kwargs = {"config": config} if config else {}
    try:
        builder = module.Builder(data_dir=data_dir, **kwargs)
    except Exception as e:
        path = getattr(e, "damaged_file", None)  # tfds_builders._common.DatasetInfoError
        if path is None:
            raise
        root = getattr(e, "data_dir", None) or data_dir
        raise CorruptDataError(
            f"{dataset}: cannot read {path} ({_one_line(getattr(e, 'reason', e))}); the built "
            f"dataset is damaged: rebuild it with: {rebuild_command(dataset, str(root))}"
        ) from e
    if prepare:
        builder.download_and_prepare(file_format="array_record")
    return builder.as_data_source(split=split)


def dataset_class_names(dataset: str, data_source) -> list[str]:
    """Class names of ``dataset`` from its data source's metadata (or, for datasets built before
    it recorded them, the builder module's ``CLASS_NAMES``)."""
    info = getattr(data_source, "dataset_info", None)
    meta = getattr(info, "metadata", None) or {}
    if "class_names" in meta:
        return list(meta["class_names"])
    module = importlib.import_module(f"tfds_builders.{dataset.partition('/')[0]}")
    if not hasattr(module, "CLASS_NAMES"):
        raise DataError(
            f"config.dataset: the built {dataset!r} records no class names in its metadata; "
            "rebuild it with this version of tfds_builders (python -m tfds_builders.build)"
        )
    return list(module.CLASS_NAMES)


# ----------------------------------------------------------------------------------------------
# Damaged data.


class CorruptDataError(DataError):
    """A built dataset cannot be read (a damaged shard or metadata file); the message (one line)
    names the file and the command that rebuilds the dataset. A :class:`~drd_jax.errors.UserError`
    wherever it is raised (in grain's reader threads as well as in this module)."""


def rebuild_command(dataset: str, data_dir: str) -> str:
    """The builder's command, ``python -m tfds_builders.build ...``, that rebuilds ``dataset``
    in ``data_dir`` (with the builder's ``--manual_dir`` for datasets built from manual
    downloads; ``experiments.train`` has no such flag)."""
    name, _, config = dataset.partition("/")
    command = f"python -m tfds_builders.build {name}"
    if config:
        command += f" --config {config}"
    command += f" --data_dir {data_dir} --overwrite"
    try:
        builder = importlib.import_module(f"tfds_builders.{name}").Builder
    except (ImportError, AttributeError):
        return command
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        command += " --manual_dir <folder of the manual downloads>"
    return command


@dataclasses.dataclass(frozen=True)
class _Shard:
    """Records ``first..last`` of a data source, stored as records ``start..start + last - first``
    of ``filename`` (None: not an array_record source)."""

    filename: str | None
    start: int
    first: int
    last: int


def _shards(data_source) -> list[_Shard]:
    """The shards of a TFDS array_record data source, in the source's index space; one
    ``_Shard(None, 0, 0, n - 1)`` for any other sequence."""
    inner = getattr(data_source, "data_source", None)
    instructions = getattr(inner, "_read_instructions", None)  # array_record's, per shard file
    if not instructions:
        return [_Shard(None, 0, 0, len(data_source) - 1)]
    shards, first = [], 0
    for instruction in instructions:
        n = int(instruction.num_records)
        if n > 0:
            start = int(getattr(instruction, "start", 0))
            shards.append(_Shard(str(instruction.filename), start, first, first + n - 1))
        first += n
    return shards


def _shard_of(data_source, index: int) -> str | None:
    for shard in _shards(data_source):
        if shard.first <= index <= shard.last:
            return shard.filename
    return None


def _describe(data_source) -> tuple[str | None, str | None]:
    """``(dataset, data_dir)`` of a TFDS data source as ``config.dataset`` and ``config.data_dir``
    name them (``'synthetic_rgbd/tiny'``, the folder holding ``synthetic_rgbd/``), from its
    ``dataset_info``; ``(None, None)`` when it does not record them."""
    info = getattr(data_source, "dataset_info", None)
    full_name = getattr(info, "full_name", None)  # 'name/config/version' or 'name/version'
    version_dir = getattr(info, "data_dir", None)
    if not full_name or not version_dir:
        return None, None
    parts = str(full_name).split("/")
    root = pathlib.Path(str(version_dir))
    for _ in parts:
        root = root.parent
    return "/".join(parts[:-1]), str(root)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _corrupt(data_source, index: int, error: BaseException, *, dataset=None, data_dir=None):
    """The :class:`CorruptDataError` of record ``index`` of ``data_source``."""
    split = getattr(data_source, "split", None)
    where = f", split {split!r}" if split else ""
    shard = _shard_of(data_source, index)
    reason = _one_line(error) or type(error).__name__
    what = f"shard {shard} (record {index}: {reason})" if shard else f"record {index} ({reason})"
    if dataset is None:
        dataset, data_dir = _describe(data_source)
    if dataset is None:
        name, fix = "the dataset", "rebuild it with: python -m tfds_builders.build ... --overwrite"
    else:
        name, fix = dataset, f"rebuild it with: {rebuild_command(dataset, data_dir)}"
    return CorruptDataError(
        f"{name}{where}: cannot read {what}; the built dataset is damaged: {fix}"
    )


def read_record(data_source, index: int, *, dataset=None, data_dir=None) -> Any:
    """``data_source[index]``; :class:`CorruptDataError` naming the shard if it cannot be read."""
    try:
        return data_source[index]
    except Exception as e:  # array_record/Riegeli raise RuntimeError, TFDS decoding others
        raise _corrupt(data_source, index, e, dataset=dataset, data_dir=data_dir) from e


@dataclasses.dataclass(frozen=True)
class _CheckedSource:
    """``data_source`` whose records raise :class:`CorruptDataError` when they cannot be read
    (the training stream's source: a record damaged after the check before step 0, or not
    verified by it, stops training with that one line instead of grain's traceback)."""

    data_source: Any

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index):
        return read_record(self.data_source, int(index))


# Records read at once per reader when verifying (NYUv2 records are ~2 MB each).
_VERIFY_BATCH = 32
# The reader's options for a sequential pass (array_record's defaults are for random access).
_VERIFY_READER_OPTIONS = "readahead_buffer_size:4M,max_parallelism:0"


def _verify_range(shard: _Shard, first: int, last: int) -> tuple[int, int, BaseException | None]:
    """Reads the stored bytes of records ``first..last`` (source index space) of ``shard``.

    Returns ``(bytes read, the first unreadable record or -1, its error or None)``.
    """
    from array_record.python import array_record_module

    begin = shard.start + first - shard.first
    end = begin + last - first + 1
    try:
        reader = array_record_module.ArrayRecordReader(shard.filename, _VERIFY_READER_OPTIONS)
    except Exception as e:  # missing, truncated (no footer), not an array_record file
        return 0, first, e
    try:
        nbytes = 0
        try:
            for lo in range(begin, end, _VERIFY_BATCH):
                nbytes += sum(map(len, reader.read(lo, min(lo + _VERIFY_BATCH, end))))
            return nbytes, -1, None
        except Exception as batch_error:  # which record? read them one by one
            for position in range(lo, min(lo + _VERIFY_BATCH, end)):
                try:
                    reader.read([position])
                except Exception as e:
                    return nbytes, first + position - begin, e
            return nbytes, first + lo - begin, batch_error
    finally:
        reader.close()


def verify_records(
    data_source, *, dataset: str | None = None, data_dir: str | None = None, num_threads: int = 2
) -> int:
    """Reads every stored record of ``data_source`` once; returns the number of bytes read.

    A TFDS array_record source: the stored bytes of every record of every shard file, not
    decoded. array_record stores records in Riegeli chunks (TFDS writes one record per chunk,
    ``group_size:1``) whose headers hold a 64-bit HighwayHash of the header and of the chunk
    data; the reader checks both and decompresses the chunk, so a changed, missing or truncated
    byte anywhere in a record is found. Any other sequence: every item is read (decoded).

    Args:
      data_source: a split's data source (:func:`load_data_source`) or any sequence of examples.
      dataset, data_dir: as in :func:`check_readable`, for the message (default: from the data
        source's ``dataset_info``).
      num_threads: ranges of records read in parallel.

    Raises:
      CorruptDataError: naming the shard file, the record and the ``tfds_builders.build``
        command (of the first damaged record in record order).
    """
    n = _check_source(data_source)
    num_threads = _check_int("num_threads", num_threads, 1)
    shards = _shards(data_source)
    if shards[0].filename is None:
        for index in range(n):
            read_record(data_source, index, dataset=dataset, data_dir=data_dir)
        return 0
    step = _VERIFY_BATCH * 4  # records per task
    tasks = [
        (shard, lo, min(lo + step - 1, shard.last))
        for shard in shards
        for lo in range(shard.first, shard.last + 1, step)
    ]
    with concurrent.futures.ThreadPoolExecutor(min(num_threads, len(tasks))) as pool:
        results = list(pool.map(lambda task: _verify_range(*task), tasks))
    for _, index, error in results:  # in record order
        if error is not None:
            raise _corrupt(data_source, index, error, dataset=dataset, data_dir=data_dir)
    return sum(nbytes for nbytes, _, _ in results)


class DataCheck(NamedTuple):
    """What :func:`check_readable` read: ``records`` (all of them, or the first and last of each
    shard), ``bytes`` of stored records verified (0 when not verified), ``seconds`` taken."""

    records: int
    bytes: int
    seconds: float


def check_readable(
    data_source, *, dataset: str, data_dir: str, verify_all: bool = True, num_threads: int = 2
) -> DataCheck:
    """Checks that every record of ``data_source`` can be read, before training reads it.

    Decodes the first and the last record of every shard (the features as stored), then, with
    ``verify_all`` (the default), reads every record's stored bytes, checking each against its
    hash (:func:`verify_records`). A missing, truncated, overwritten or bit-flipped shard is
    found before step 0, not in the middle of training.

    Args:
      data_source: a split's data source (:func:`load_data_source`) or any sequence of examples.
      dataset: its name as in ``config.dataset`` (``"synthetic_rgbd/tiny"``), for the message.
      data_dir: where it is built, for the message.
      verify_all: also verify every record (False: the first and last of each shard only).
      num_threads: threads that verify.

    Returns:
      A :class:`DataCheck`: what was read and how long it took (for the caller's log).

    Raises:
      CorruptDataError: naming the shard file and the ``tfds_builders.build`` command.
    """
    started = time.perf_counter()
    n = _check_source(data_source)
    ends = set()
    for shard in _shards(data_source):
        ends |= {shard.first, shard.last}
    for index in sorted(ends):
        read_record(data_source, index, dataset=dataset, data_dir=data_dir)
    if not verify_all:
        return DataCheck(len(ends), 0, time.perf_counter() - started)
    nbytes = verify_records(
        data_source, dataset=dataset, data_dir=data_dir, num_threads=num_threads
    )
    return DataCheck(n, nbytes, time.perf_counter() - started)
