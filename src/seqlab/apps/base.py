"""What every application shares: its data options, where its examples come from, batching that
resumes exactly, the run directory, and the settings a user may give.

An application (one per kind: lm, classify, tag, seq2seq, generate) is the glue between
``seqlab.data`` (examples, vocabularies, batches), ``seqlab.models`` (the network),
``seqlab.train`` (the loop, metrics, checkpoints) and ``seqlab.decoding`` (inference). It owns
exactly the things that depend on the kind of task:

==============  ============================================================================
method          what it does
==============  ============================================================================
examples        the examples of a split: ``--task`` (seqlab.data.load_task) or ``--data``
build           vocabularies / label sets from the training examples (or from a checkpoint)
model_sizes     vocab_size, tgt_vocab_size, num_classes for ModelConfig
batches         an iterable of tensor tuples with ``state_dict()`` (the trainer resumes it)
loss_fn         ``(model, batch) -> (loss_sum, count)``, padding masked out
evaluate        ``(model, split) -> metrics``
==============  ============================================================================

The run directory is the checkpoint folder of :mod:`seqlab.train.checkpoint`; its JSON config
holds everything :func:`load_run` needs to rebuild the application and the model from the
directory alone::

    config = {"model_class": ..., "kind": ..., "model": ModelConfig dict, "train": TrainConfig dict,
              "data": the app's options dict, "seqlab": version}
    extra  = {"vocab": the app's vocabularies and label sets, "trainer": the trainer's own state}
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Optional, Sequence

from torch import Tensor, nn

from seqlab.data import TASKS, DataError, DataWarning, load_task, read_examples, split_of
from seqlab.train.checkpoint import BEST, LATEST, LOCK, atomic_write_text, remove_stale_temporaries
from seqlab.train.loop import TENSORBOARD_DIR


SEED_LIMIT = 2 ** 32  # seeds are in [0, 2**32): what every generator seqlab seeds (torch, numpy, Python) takes


class ConfigError(ValueError):
    """A setting the user gave cannot be used: an unknown key, a value of the wrong type, a
    combination that cannot work. One line, saying what was expected and what arrived."""


# ----------------------------------------------------------------------------
# Options


@dataclass
class DataOptions:
    """Where an application's examples come from and how they become ids (keys settable as
    ``key=value``; the kind-specific options live in each app's subclass).

    ``task`` and ``data`` come from ``--task`` / ``--data``; exactly one is used (``task``
    defaults to the kind's task). With ``data``, the validation and test examples are those of
    the file that :func:`seqlab.data.split_of` sends there, unless ``valid`` / ``test`` name
    files of their own.
    """

    task: Optional[str] = None          # a seqlab.data.TASKS name
    data: Optional[str] = None          # the user's training file (.txt, .tsv, .jsonl)
    valid: Optional[str] = None         # the user's validation file (default: a hash split of data)
    test: Optional[str] = None          # the user's test file (default: a hash split of data)
    format: Optional[str] = None        # 'tsv' | 'jsonl' | 'text' when the suffix does not say
    n_train: Optional[int] = None       # examples (documents for lm) per split; None = the task's default
    n_valid: Optional[int] = None
    n_test: Optional[int] = None
    data_seed: int = 0                  # seed of the generated tasks (not of the shuffle: that is TrainConfig.seed)
    level: str = "char"                 # 'char' | 'word': what one token of text is
    min_freq: int = 1                   # rarer symbols become <unk> (teaches the model what <unk> means)
    max_vocab: Optional[int] = None     # cap on the vocabulary size, specials included
    # longest line (characters) of the user's files; a longer one is refused with its line number,
    # since one example is one sequence through the network and its memory grows with the length
    max_line: int = 10_000

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict) -> "DataOptions":
        """Options from a dict; unknown keys and values of the wrong type are a ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"data options must be a table, got {type(d).__name__}")
        known = cls.keys()
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ConfigError(f"unknown data option {unknown[0]!r}; expected one of {', '.join(known)}")
        opts = cls(**d)
        opts.validate()
        return opts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        hints = {f.name: f.type for f in dataclasses.fields(self)}
        for name, hint in hints.items():
            value = getattr(self, name)
            hint = str(hint)
            if value is None:
                if not hint.startswith("Optional"):
                    raise ConfigError(f"{name} must be set, got None")
                continue
            base = hint.removeprefix("Optional[").removesuffix("]")
            ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                  "bool": lambda v: isinstance(v, bool),
                  "str": lambda v: isinstance(v, str)}[base](value)
            if not ok:
                raise ConfigError(f"{name} must be {base}, got {value!r} ({type(value).__name__})")
            if base == "float":
                setattr(self, name, float(value))
        if self.level not in ("char", "word"):
            raise ConfigError(f"level must be 'char' or 'word', got {self.level!r}")
        for name in ("n_train", "n_valid", "n_test", "max_vocab"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")
        if self.min_freq < 1:
            raise ConfigError(f"min_freq must be >= 1, got {self.min_freq}")
        if not 0 <= self.data_seed < SEED_LIMIT:
            raise ConfigError(f"data_seed must be in [0, 2**32), got {self.data_seed}")
        if self.max_line < 1:
            raise ConfigError(f"max_line must be >= 1, got {self.max_line}")
        if self.task is not None and self.data is not None:
            raise ConfigError(f"give either a task or a data file, got task {self.task!r} and data {self.data!r}")


# ----------------------------------------------------------------------------
# Batches that resume


class Batches:
    """Tensor-tuple batches over a :class:`seqlab.data.BatchIterator` (or any iterator with
    ``state_dict``), collated by ``collate``; the position is the wrapped iterator's, so a
    trainer that saves ``state_dict()`` resumes on the next batch."""

    def __init__(self, inner, collate: Callable[[list], tuple]):
        self.inner = inner
        self.collate = collate

    def __iter__(self) -> Iterator[tuple]:
        for items in self.inner:
            yield self.collate(items)

    def __len__(self) -> int:
        return len(self.inner)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (methods other than forward live there)."""
    return getattr(model, "module", model)


def chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i: i + size]


# ----------------------------------------------------------------------------
# The application base class


class App:
    """One kind of task; subclasses fill in the kind-specific parts (see the module docstring)."""

    kind: ClassVar[str]
    default_task: ClassVar[str]
    model_class: ClassVar[str]          # the class build_model gives for this kind (checked on load)
    Options: ClassVar[type] = DataOptions
    monitor: ClassVar[str] = "loss"     # the metric that picks the best checkpoint / early stop
    mode: ClassVar[str] = "min"
    eval_batch_size: ClassVar[int] = 128
    # Set by train_run to the trainer's checkpoint interval: an app that carries state between
    # batches (lm) restarts it where checkpoints fall, so resuming from one is exact.
    checkpoint_every: int = 0
    # Set by train_run to the ModelConfig being trained, for what depends on the arch (the lm's
    # window cutting); None when batches are asked for without a model in view.
    model_config: Any = None

    @classmethod
    def defaults(cls, arch: str) -> dict[str, Any]:
        """Settings a fresh ``train KIND --arch ARCH`` starts from, under the user's own (none here)."""
        return {}

    def __init__(self, options: DataOptions):
        if not isinstance(options, self.Options):
            raise ConfigError(f"{self.kind} app expects {self.Options.__name__}, got {type(options).__name__}")
        self.options = options
        if options.task is None and options.data is None:
            options.task = self.default_task
        if options.task is not None:
            if options.task not in TASKS:
                raise DataError(f"unknown task {options.task!r}; expected one of {sorted(TASKS)}")
            task_kind = TASKS[options.task].kind
            if task_kind != self.kind:
                same = sorted(n for n, t in TASKS.items() if t.kind == self.kind)
                raise DataError(f"task {options.task!r} is a {task_kind} task, expected a {self.kind} task "
                                f"({', '.join(same)})")
            for name in ("valid", "test"):
                if getattr(options, name) is not None:
                    raise ConfigError(f"--{name} goes with --data, got it with task {options.task!r}")
        self._cache: dict[str, list] = {}

    # -- examples ---------------------------------------------------------------------------

    def examples(self, split: str) -> list:
        """The examples of ``split`` ('train', 'validation', 'test') in the kind's shape."""
        if split not in self._cache:
            self._cache[split] = self._load(split)
        return self._cache[split]

    def require(self, split: str) -> None:
        """Read ``split`` now (a DataError if it has no examples) rather than at its first use."""
        self.examples(split)

    def _load(self, split: str) -> list:
        o = self.options
        n = {"train": o.n_train, "validation": o.n_valid, "test": o.n_test}[split]
        if o.task is not None:
            out = load_task(o.task, split, n, seed=o.data_seed)
            where = f"task {o.task!r}"
        else:
            own = {"validation": o.valid, "test": o.test}.get(split)
            if own is not None:
                out = self.read_file(own)
                where = own
            else:
                units = self.read_file(o.data)
                out = [u for u in units if split_of(f"{self.kind}:{self.split_key(u)}") == split]
                flag = "--valid" if split == "validation" else "--test"
                where = f"{o.data} (its {split} part by hash split; train with {flag} FILE to name one)"
            if n is not None:
                out = out[:n]
        if not out:
            raise DataError(f"{where}: no {split} examples; expected at least one")
        return out

    def read_file(self, path: str) -> list:
        """The examples of one of the user's files."""
        return read_examples(path, self.kind, format=self.options.format, max_line=self.options.max_line)

    def split_key(self, example) -> str:
        """What :func:`split_of` hashes to place one example of the user's file."""
        return json.dumps(example, ensure_ascii=False)

    def source(self, split: str) -> str:
        """Where the examples of ``split`` come from, for messages: a file or a task."""
        o = self.options
        if o.task is not None:
            return f"task {o.task!r}"
        own = {"validation": o.valid, "test": o.test}.get(split)
        return own if own is not None else f"{o.data} (its {split} part)"

    # -- settings that only the kind can judge ------------------------------------------------

    @classmethod
    def check_model(cls, mcfg: Any, options: DataOptions) -> None:
        """Raise a ConfigError if the model settings ``mcfg`` (sizes not yet known) cannot train
        with ``options``; called before any data is read."""

    # -- labels -----------------------------------------------------------------------------

    def label_set(self):
        """The closed label set of the kind (classes, tags, conditions), or None for kinds without one."""
        return None

    def labels_of(self, example) -> list[str]:
        """The labels one example carries (empty for kinds without labels)."""
        return []

    def check_splits(self) -> None:
        """After ``build``: a DataError if no validation label was seen in training (a file of
        another kind, most likely), a DataWarning for each split holding labels training never
        shows, since the model cannot learn to predict them."""
        if self.label_set() is None:
            return
        seen = {y for ex in self.examples("train") for y in self.labels_of(ex)}
        splits = ["validation"] + (["test"] if self.options.test is not None else [])
        for split in splits:
            labels = [y for ex in self.examples(split) for y in self.labels_of(ex)]
            unseen = sorted(set(labels) - seen)
            if unseen and len(unseen) == len(set(labels)):
                raise DataError(f"{self.source(split)}: none of its {len(set(labels))} label(s) appears in the "
                                f"training data (e.g. {unseen[0]!r}); expected a {self.kind} file with the "
                                f"training data's labels")
            if unseen:
                count = sum(y in unseen for y in labels)
                warnings.warn(f"{self.source(split)}: {count} {split} label(s) never seen in training "
                              f"({', '.join(map(repr, unseen[:5]))}{', ...' if len(unseen) > 5 else ''}); the "
                              f"model cannot learn to predict them", DataWarning, stacklevel=2)

    def encode_label(self, label: str, split: str) -> int:
        """The id of ``label`` of an example of ``split``; an unknown one is a DataError naming the split's source."""
        try:
            return self.label_set().encode(label)
        except DataError as e:
            raise DataError(f"{self.source(split)}: {e} (labels come from the training and validation data)"
                            ) from None

    # -- vocabularies -----------------------------------------------------------------------

    def build(self) -> None:
        """Vocabularies / label sets from the training examples."""
        raise NotImplementedError

    def vocab_dict(self) -> dict:
        """The vocabularies as JSON (goes into the checkpoint's extra['vocab'])."""
        raise NotImplementedError

    def load_vocab(self, d: dict) -> None:
        raise NotImplementedError

    def model_sizes(self) -> dict[str, int]:
        """The ModelConfig keys the data fixes (vocab_size, tgt_vocab_size, num_classes)."""
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------

    def batches(self, batch_size: int, seed: int):
        raise NotImplementedError

    def loss_fn(self, model: nn.Module, batch: tuple) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str = "validation", *, during_training: bool = False
                 ) -> dict[str, float]:
        raise NotImplementedError

    def scoring(self, model: nn.Module) -> str:
        """How ``evaluate`` scores a split, in words, where that is not obvious ('' if it is)."""
        return ""


# ----------------------------------------------------------------------------
# Settings: TOML files and key=value overrides


def parse_value(key: str, text: str) -> Any:
    """``text`` as a TOML value (``3e-4``, ``true``, ``"gru"``, ``[1, 2]``); a bare word that is
    not valid TOML is taken as a string, so ``attention=bahdanau`` works without quotes."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text and all(c.isalnum() or c in "-_.:/+" for c in text):
            return text
        raise ConfigError(f"{key}={text}: expected a TOML value (a number, true/false, or a quoted string)") from None


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=3e-4", "bidirectional=true"]`` -> ``{"lr": 0.0003, "bidirectional": True}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"expected a setting as key=value, got {item!r}")
        out[key] = parse_value(key, text.strip())
    return out


def read_config_file(path: str) -> dict[str, Any]:
    """A TOML file of settings: flat keys, or the tables [model], [train], [data] (flattened)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid UTF-8 at byte offset {e.start}") from None
    if not text.strip():
        raise ConfigError(f"{p}: config file is empty")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML ({str(e).splitlines()[0]})") from None
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in ("model", "train", "data"):
                raise ConfigError(f"{p}: unknown table [{key}]; expected [model], [train] or [data] or flat keys")
            for k, v in value.items():
                flat[f"{key}.{k}"] = v
        else:
            flat[key] = value
    return flat


# ModelConfig keys the data and the command fix; a user setting them is told where they come from.
DERIVED_MODEL_KEYS = {"kind": "the command (train KIND)", "vocab_size": "the data", "tgt_vocab_size": "the data",
                      "num_classes": "the data"}


def split_settings(settings: dict[str, Any], model_keys: Sequence[str], train_keys: Sequence[str],
                   data_keys: Sequence[str]) -> tuple[dict, dict, dict]:
    """Route each setting to the model, train or data group; unknown keys are a ConfigError
    listing the keys there are. A key may carry its group (``model.dropout``)."""
    groups = {"model": list(model_keys), "train": list(train_keys), "data": list(data_keys)}
    out: dict[str, dict] = {"model": {}, "train": {}, "data": {}}
    for key, value in settings.items():
        group, _, name = key.rpartition(".")
        if group and group not in groups:
            raise ConfigError(f"unknown setting {key!r}; a group must be model, train or data, got {group!r}")
        if name in DERIVED_MODEL_KEYS and (not group or group == "model"):
            raise ConfigError(f"{name} is set by {DERIVED_MODEL_KEYS[name]}, not by a setting; got {name}={value!r}")
        homes = [g for g in (group,) if g] or [g for g, keys in groups.items() if name in keys]
        if not homes or name not in groups[homes[0]]:
            known = sorted(set(k for g in groups.values() for k in g) - set(DERIVED_MODEL_KEYS))
            where = f" in [{group}]" if group else ""
            raise ConfigError(f"unknown setting {name!r}{where}; expected one of: {', '.join(known)}")
        out[homes[0]][name] = value
    return out["model"], out["train"], out["data"]


# ----------------------------------------------------------------------------
# Run directories

RUN_MARKERS = (LATEST, BEST)  # the pointer files of seqlab.train.checkpoint
OWN_FILES = (LOCK,)  # files a run directory may hold that are neither a run nor the user's


def holds_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and (any((run_dir / m).exists() for m in RUN_MARKERS)
                                 or any(p.is_dir() for p in run_dir.glob("ckpt-*")))


def check_writable(run_dir: Path) -> None:
    """A ConfigError unless ``run_dir`` is, or can be created as, a directory this process can
    write in. Asked of the file system by creating (and removing) a file, since permission bits
    do not tell about read-only mounts or a root user."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: is a file, expected a directory")
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {run_dir}: cannot be created, {parent} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".seqlab-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"--out {run_dir}: cannot write in {parent} ({e.strerror})") from None


def prepare_out(run_dir: Path, *, force: bool, check_only: bool = False) -> None:
    """Make ``run_dir`` ready for a new run. Nothing there is removed unless ``force``; with
    ``force`` only what a run wrote (checkpoints, 'latest', 'best', metrics.json, temporaries, and
    the tensorboard/ event files, so that no old curve mixes with the new run's) is removed.
    ``check_only``: raise if it cannot be done, change nothing (the location must be writable too).
    The caller holds the run's lock when it is not ``check_only``."""
    check_writable(run_dir)
    if holds_run(run_dir):
        if not force:
            raise ConfigError(f"--out {run_dir}: already holds a run; give --resume to continue it or --force to "
                              f"start over (its checkpoints will be deleted)")
        if check_only:
            return
        remove_stale_temporaries(run_dir)
        for p in run_dir.iterdir():
            if (p.name.startswith(("ckpt-", "best-")) or p.name == TENSORBOARD_DIR) and p.is_dir():
                shutil.rmtree(p)
            elif p.name in (*RUN_MARKERS, "metrics.json"):
                p.unlink()
    elif run_dir.is_dir() and any(p.name not in OWN_FILES for p in run_dir.iterdir()) and not force:
        raise ConfigError(f"--out {run_dir}: is not empty and holds no run; give an empty or new directory "
                          f"(or --force to write into it)")
    if not check_only:
        run_dir.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict JSON (non-finite numbers become null), written atomically."""
    atomic_write_text(path, json.dumps(finite_json(obj), indent=1, sort_keys=True, allow_nan=False) + "\n")


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: JSON has no such numbers, and
    ``json.dumps`` would write the non-standard ``NaN`` / ``Infinity`` that strict parsers reject."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
