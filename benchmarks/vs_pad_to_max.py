"""seqpipe vs the pad-to-max recipe: training and embedding throughput, side by side.

On seed-shaped data (1,326 sequences, 8 features, lengths 7..356; once uniform,
once long-tailed log-normal, as in `padding_efficiency.py`), in one process,
alternating the variants epoch by epoch (the order flips every repeat, so
drifting load from other processes hits every variant alike):

* `naive`: the recipe of the seed question exactly: `Masking(0.0)` ->
  `LSTM(100, activation="relu")` -> `RepeatVector(356)` ->
  `LSTM(8, activation="relu", return_sequences=True)`, Adam, MSE, batch 32,
  numpy arrays zero-padded to 356, `model.fit` one epoch per measurement
  (timed from `on_epoch_begin` to `on_epoch_end`: the data adapter's setup is
  not counted against it);
* `seqpipe`: `ModelConfig(units=100, embedding_dim=0, decoder_units=8,
  bidirectional=False, activation="relu", pooling=())` (seqpipe's relu is relu6: the same
  op count as relu, and it does not overflow), fed by `seqpipe.input_pipeline.data.make_dataset`
  from the TFRecord shards with the default `DataConfig` (sorted windows), trained
  by `seqpipe.training.trainer.Trainer.train_epoch`: the real step, loop and backups;
* `seqpipe_xla`: the same with `train.jit_compile=true`, on a grid of 16
  lengths per doubling without the efficiency floor (bounded batch shapes,
  as the trainer advises for XLA; only with `--xla`).

Per epoch: seconds, real timesteps per second, and the speed-up over `naive`
(naive seconds / seqpipe seconds of the same repeat). Then embedding the whole
split: the naive encoder sub-model's `predict` on the padded arrays (batch 32)
vs seqpipe's exported encoder (SavedModel) through `seqpipe.commands.embed.compute_embeddings`.
Also: padding efficiency of each, the padding-invariance error of each
embedding (max |e_alone - e_batched| / max |e| over 32 sequences embedded
alone, unpadded, vs in one batch padded to 356 beside the longest sequence),
and how much a genuine all-zero timestep (inserted in the middle of 32
sequences, in the space each model reads) moves the embedding (max |e_with -
e_without| / max |e|): 0 means the model cannot see such a step.

`--memory` instead trains seqpipe (`seqpipe.training.trainer.train`, 1 epoch) on N and 4N
sequences, each in a fresh subprocess, and reports the peak RSS (`VmHWM`),
with the default shuffle buffer and with a small one.

    taskset -c 0,1 python benchmarks/vs_pad_to_max.py [--repeats 5] [--xla] [--json out.json]
    taskset -c 0,1 python benchmarks/vs_pad_to_max.py --memory [--json mem.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from padding_efficiency import MAX_LENGTH, NUM_FEATURES, sample_lengths, write_dataset  # noqa: E402

from seqpipe.commands import embed  # noqa: E402
from seqpipe.config import dump_config, load_config  # noqa: E402
from seqpipe.dataset import metadata as metadata_lib  # noqa: E402
from seqpipe.dataset.metadata import DatasetMetadata  # noqa: E402
from seqpipe.input_pipeline import data, reading  # noqa: E402
from seqpipe.model import autoencoder  # noqa: E402
from seqpipe.training import trainer as train  # noqa: E402
from seqpipe.training.model_dir import CONFIG_FILE, ENCODER_DIR, METADATA_COPY  # noqa: E402

BATCH_SIZE = 32
UNITS, DECODER_UNITS = 100, 8
PROBES = 32  # sequences in the padding-invariance check


@dataclasses.dataclass
class Data:
    """One seed-shaped data set: TFRecords on disk and the same sequences in memory."""

    kind: str
    root: Path
    sequences: list[np.ndarray]  # normalized as seqpipe normalizes them
    metadata: DatasetMetadata

    @property
    def real_timesteps(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def make_data(kind: str, root: Path, seed: int, num_copies: int = 1) -> Data:
    """Writes the shards (via `padding_efficiency.write_dataset`) and keeps the arrays."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([sample_lengths(kind, rng) for _ in range(num_copies)])
    twin = copy.deepcopy(rng)  # write_dataset draws the sequences from this state
    root.mkdir(parents=True, exist_ok=True)
    write_dataset(root, lengths, rng)
    raw = [twin.normal(size=(n, NUM_FEATURES)).astype(np.float32) for n in lengths]
    metadata = metadata_lib.read(root)
    mean, std = reading.normalization_arrays(metadata.feature_stats, NUM_FEATURES)
    return Data(kind, root, [(s - mean) / std for s in raw], metadata)


def pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """The sequences zero-padded after their steps to `length`, as the recipe feeds them."""
    x = np.zeros((len(sequences), length, sequences[0].shape[-1]), np.float32)
    for i, s in enumerate(sequences):
        x[i, :len(s)] = s
    return x


# ----------------------------------------------------------------------------- naive


class _EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started
        self.loss = (logs or {}).get("loss")


def build_recipe(max_length: int, num_features: int, units: int = UNITS,
                 decoder_units: int = DECODER_UNITS, activation: str = "relu",
                 output_dense: bool = False) -> tuple[keras.Model, keras.Model]:
    """The pad-to-max recipe, compiled (Adam, MSE over the whole padded tensor).

    `Masking(0.0)` -> `LSTM(units)` -> `RepeatVector(max_length)` ->
    `LSTM(decoder_units, return_sequences=True)`, then `Dense(num_features)`
    with `output_dense` (the tutorials' output head; without it, as in the seed
    question, `decoder_units` must be `num_features`).

    Returns:
        `(autoencoder, encoder)`: the encoder is the same masking and LSTM
        layers (same weights) on inputs of any length.
    """
    inputs = keras.Input(shape=(max_length, num_features))
    masking = keras.layers.Masking(mask_value=0.0)
    lstm = keras.layers.LSTM(units, activation=activation)
    repeated = keras.layers.RepeatVector(max_length)(lstm(masking(inputs)))
    decoded = keras.layers.LSTM(decoder_units, activation=activation,
                                return_sequences=True)(repeated)
    if output_dense:
        decoded = keras.layers.Dense(num_features)(decoded)
    model = keras.Model(inputs, decoded)
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    any_length = keras.Input(shape=(None, num_features))
    return model, keras.Model(any_length, lstm(masking(any_length)))


class Naive:
    """The seed question's model, trained with `fit` on arrays padded to 356."""

    def __init__(self, ds: Data, seed: int):
        keras.utils.set_random_seed(seed)
        self.model, self.encoder = build_recipe(MAX_LENGTH, NUM_FEATURES)
        self.x = pad(ds.sequences, MAX_LENGTH)
        self.real_timesteps = ds.real_timesteps

    def train_epoch(self) -> dict:
        timer = _EpochTimer()
        self.model.fit(self.x, self.x, batch_size=BATCH_SIZE, epochs=1, shuffle=True,
                       verbose=0, callbacks=[timer])
        return {"seconds": timer.seconds, "loss": timer.loss}

    def embed_all(self) -> float:
        started = time.perf_counter()
        self.encoder.predict(self.x, batch_size=BATCH_SIZE, verbose=0)
        return time.perf_counter() - started

    def embed_alone_and_batched(self, probes: list[np.ndarray], longest: np.ndarray):
        alone = np.concatenate([self.encoder.predict(s[None], verbose=0) for s in probes])
        batched = self.embed(probes, longest)
        return alone, batched

    def embed(self, sequences: list[np.ndarray], longest: np.ndarray | None = None):
        """Embeddings of `sequences` in one batch padded to 356 (beside `longest`)."""
        extra = [] if longest is None else [longest]
        x = pad([*sequences, *extra], MAX_LENGTH)
        return self.encoder.predict(x, batch_size=len(x), verbose=0)[:len(sequences)]

    @property
    def padding_efficiency(self) -> float:
        return self.real_timesteps / self.x.shape[0] / self.x.shape[1]


# ----------------------------------------------------------------------------- seqpipe


class Seqpipe:
    """seqpipe's trainer (`Trainer.train_epoch`) on its TFRecord pipeline."""

    def __init__(self, ds: Data, work: Path, seed: int, overrides: tuple[str, ...] = ()):
        self.cfg = load_config("default", [
            f"model.units={UNITS}", "model.embedding_dim=0", "model.pooling=[]",
            f"model.decoder_units={DECODER_UNITS}", "model.bidirectional=false",
            "model.activation=relu", f"data.batch_size={BATCH_SIZE}",
            f"train.seed={seed}", *overrides])
        self.ds = ds
        self.model_dir = work
        self.trainer = train.Trainer(ds.root, work, self.cfg, metadata=ds.metadata,
                                     strategy=tf.distribute.get_strategy(), verbose=False)
        self.epoch = 0
        self._served = None

    def train_epoch(self) -> dict:
        result = self.trainer.train_epoch(self.epoch)
        self.epoch += 1
        self.trainer.state.step_in_epoch.assign(0)
        return {"seconds": result.seconds, "loss": result.loss, "steps": result.num_steps,
                "real_timesteps": result.num_valid_timesteps}

    def export(self):
        """Writes what `seqpipe embed` reads and loads the SavedModel encoder."""
        dump_config(self.cfg, self.model_dir / CONFIG_FILE)
        metadata_lib.write_file(self.ds.metadata, self.model_dir / METADATA_COPY)
        staging = self.model_dir / ENCODER_DIR
        autoencoder.export_encoder(self.trainer.encoder, staging)
        self._served = embed.load_encoder(self.model_dir)

    def embed_all(self) -> float:
        if self._served is None:
            self.export()
        started = time.perf_counter()
        embed.compute_embeddings(self.ds.root, self.model_dir, "train", encoder=self._served)
        return time.perf_counter() - started

    def embed_alone_and_batched(self, probes: list[np.ndarray], longest: np.ndarray):
        alone = np.concatenate([self.embed([s]) for s in probes])
        batched = self.embed([*probes, longest])[:-1]
        return alone, batched

    def embed(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Embeddings of `sequences` in one batch padded to the longest, with its mask."""
        if self._served is None:
            self.export()
        x = pad(sequences, max(len(s) for s in sequences))
        mask = np.zeros(x.shape[:2], np.float32)
        for i, s in enumerate(sequences):
            mask[i, :len(s)] = 1.0
        return self._served(x=tf.constant(x), mask=tf.constant(mask))[
            autoencoder.EMBEDDING_KEY].numpy()

    def padding_stats(self) -> dict:
        return data.padding_efficiency(data.make_dataset(
            self.ds.root, "train", self.cfg.data, training=True, metadata=self.ds.metadata))

    @property
    def traces(self) -> int:
        return self.trainer.train_step.experimental_get_tracing_count()


# ----------------------------------------------------------------------------- runs


def zero_step_effect(runner, ds: Data, seed: int) -> float:
    """How much one genuine all-zero timestep in the middle moves the embedding."""
    rng = np.random.default_rng(seed + 1)
    usable = [s for s in ds.sequences if 3 <= len(s) < MAX_LENGTH]
    probes = [usable[i] for i in rng.choice(len(usable), PROBES, replace=False)]
    with_zero = [np.insert(s, len(s) // 2, 0.0, axis=0) for s in probes]
    without, with_step = runner.embed(probes), runner.embed(with_zero)
    scale = float(np.max(np.abs(without))) or 1.0
    return float(np.max(np.abs(with_step - without)) / scale)


def invariance_error(runner, ds: Data, seed: int) -> float:
    rng = np.random.default_rng(seed)
    lengths = np.array([len(s) for s in ds.sequences])
    longest = ds.sequences[int(lengths.argmax())]
    probes = [ds.sequences[i] for i in rng.choice(len(ds.sequences), PROBES, replace=False)]
    alone, batched = runner.embed_alone_and_batched(probes, longest)
    scale = float(np.max(np.abs(alone))) or 1.0
    return float(np.max(np.abs(alone - batched)) / scale)


def compare(kind: str, repeats: int, seed: int, xla: bool, work: Path) -> dict:
    ds = make_data(kind, work / f"data-{kind}", seed)
    runners = {"naive": Naive(ds, seed),
               "seqpipe": Seqpipe(ds, work / f"model-{kind}", seed)}
    if xla:
        runners["seqpipe_xla"] = Seqpipe(ds, work / f"model-{kind}-xla", seed,
                                         ("train.jit_compile=true", "data.length_grid=16",
                                          "data.min_batch_efficiency=0"))
    names = list(runners)
    warmup = {name: runner.train_epoch() for name, runner in runners.items()}
    epochs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            epochs[name].append(runners[name].train_epoch())
    for runner in runners.values():  # warm-up: tracing, SavedModel export and load
        runner.embed_all()
    embeds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            embeds[name].append(runners[name].embed_all())

    result = {"lengths": kind, "num_sequences": len(ds.sequences),
              "real_timesteps": ds.real_timesteps, "variants": {}}
    for name in names:
        runner = runners[name]
        seconds = [e["seconds"] for e in epochs[name]]
        speedups = [n["seconds"] / e["seconds"] for n, e in zip(epochs["naive"], epochs[name],
                                                                 strict=True)]
        embed_speedups = [n / e for n, e in zip(embeds["naive"], embeds[name], strict=True)]
        row = {
            "warmup_epoch_s": warmup[name]["seconds"],
            "epoch_s": seconds,
            "epoch_s_median": statistics.median(seconds),
            "timesteps_per_s_median": ds.real_timesteps / statistics.median(seconds),
            "train_speedup": speedups,
            "train_speedup_median": statistics.median(speedups),
            "embed_s": embeds[name],
            "embed_s_median": statistics.median(embeds[name]),
            "embed_timesteps_per_s_median": ds.real_timesteps / statistics.median(embeds[name]),
            "embed_speedup": embed_speedups,
            "embed_speedup_median": statistics.median(embed_speedups),
            "last_loss": epochs[name][-1]["loss"],
            "invariance_error": invariance_error(runner, ds, seed),
            "zero_step_effect": zero_step_effect(runner, ds, seed),
        }
        if isinstance(runner, Seqpipe):
            stats = runner.padding_stats()
            row.update(padding_efficiency=stats["efficiency"], steps=epochs[name][-1]["steps"],
                       distinct_shapes=stats["distinct_shapes"], traces=runner.traces)
        else:
            row.update(padding_efficiency=runner.padding_efficiency,
                       steps=-(-len(ds.sequences) // BATCH_SIZE), distinct_shapes=1)
        result["variants"][name] = row
    return result


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}..{max(values):.2f}"


def print_table(results: list[dict]) -> None:
    header = (f"{'lengths':<10} {'variant':<12} {'pad.eff':>7} {'steps':>5} {'epoch s':>8} "
              f"{'timesteps/s':>11} {'train x':>7} {'(spread)':>11} {'embed s':>8} "
              f"{'embed x':>7} {'(spread)':>11} {'invariance':>10} {'zero step':>9}")
    print(header)
    print("-" * len(header))
    for result in results:
        for name, row in result["variants"].items():
            print(f"{result['lengths']:<10} {name:<12} {row['padding_efficiency']:>7.3f} "
                  f"{row['steps']:>5} {row['epoch_s_median']:>8.2f} "
                  f"{row['timesteps_per_s_median']:>11,.0f} {row['train_speedup_median']:>7.2f} "
                  f"{spread(row['train_speedup']):>11} {row['embed_s_median']:>8.2f} "
                  f"{row['embed_speedup_median']:>7.2f} {spread(row['embed_speedup']):>11} "
                  f"{row['invariance_error']:>10.1e} {row['zero_step_effect']:>9.1e}")
        naive = result["variants"]["naive"]["padding_efficiency"]
        print(f"{result['lengths']}: physical limit 1/naive padding efficiency = {1 / naive:.2f}x")


# ----------------------------------------------------------------------------- memory


def _peak_rss_mb() -> float:
    """This process's peak RSS since it started (`VmHWM` on Linux).

    `ru_maxrss` is no good here: Linux carries the RSS of the parent at fork
    time into the child's, and the parent holds the benchmark's data.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(data_dir: str, shuffle_buffer: int) -> None:
    """Trains one epoch on `data_dir` in this fresh process; prints peak RSS as JSON."""
    metadata = metadata_lib.read(data_dir)
    cfg = load_config("default", [
        f"model.units={UNITS}", "model.embedding_dim=0", "model.pooling=[]",
        f"model.decoder_units={DECODER_UNITS}", "model.bidirectional=false",
        "train.epochs=1", f"data.shuffle_buffer={shuffle_buffer}"])
    before = _peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="seqpipe-mem-") as tmp:
        train.train(data_dir, Path(tmp) / "model", cfg, verbose=False)
    peak = _peak_rss_mb()
    print(json.dumps({"peak_rss_mb": peak, "before_train_mb": before,
                      "num_sequences": metadata.num_records("train"),
                      "timesteps": metadata.split("train").num_timesteps}))


def memory(kind: str, seed: int, work: Path) -> list[dict]:
    """Peak RSS of a 1-epoch training run on N and 4N sequences, each in a subprocess."""
    rows = []
    for copies in (1, 4):
        data_dir = work / f"mem-{kind}-{copies}"
        make_data(kind, data_dir, seed, num_copies=copies)
        for shuffle_buffer in (10000, 1000):
            out = subprocess.run(
                [sys.executable, __file__, "--_memory-child", str(data_dir),
                 str(shuffle_buffer)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"lengths": kind, "copies": copies, "shuffle_buffer": shuffle_buffer,
                         **row})
            print(f"{kind:<10} shuffle_buffer {shuffle_buffer:>6} {row['num_sequences']:>6} "
                  f"sequences ({row['timesteps']:>9,} timesteps): peak RSS "
                  f"{row['peak_rss_mb']:,.0f} MB (before training "
                  f"{row['before_train_mb']:,.0f} MB)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", default=["uniform", "lognormal"],
                        choices=["uniform", "lognormal"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xla", action="store_true", help="also seqpipe with jit_compile")
    parser.add_argument("--memory", action="store_true", help="peak RSS at N and 4N instead")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--_memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._memory_child:
        data_dir, shuffle_buffer = args._memory_child
        _memory_child(data_dir, int(shuffle_buffer))
        return
    print(f"{os.cpu_count()} cores visible, tensorflow {tf.__version__}, keras "
          f"{keras.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="seqpipe-vs-") as tmp:
        if args.memory:
            results = [row for kind in args.lengths for row in memory(kind, args.seed, Path(tmp))]
        else:
            results = [compare(kind, args.repeats, args.seed, args.xla, Path(tmp))
                       for kind in args.lengths]
            print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
