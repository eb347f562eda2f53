"""Data for seqlab: vocabularies, the standard-library corpus, generated tasks, synthetic memory
tasks, the user's own files, and batching that resumes exactly.

Nothing is downloaded: every dataset is generated from installed packages (babel, num2words,
faker) or the Python standard library, and the same arguments give the same data.

==================  ============================================================================
module              what lives there
==================  ============================================================================
base                DataError, DataWarning, KINDS (example shapes), SPLITS and split_of (the disjointness rule)
vocab               Vocab (char / word, specials <pad> <unk> <sos> <eos> = 0..3), Labels
corpus              the stdlib documentation corpus (pydoc topics + docstrings, read by ast)
tasks               TASKS registry and load_task: dates, numbers, langid, ner, names, stdlib
synthetic           copy_memory, adding_problem and their baseline losses
files               read_text, read_examples: the user's .txt / .tsv / .jsonl files
batching            pad_collate, BatchIterator, BPTTBatcher, WindowSampler
==================  ============================================================================
"""
from .base import KINDS, SPLITS, DataError, DataWarning, split_of
from .batching import BatchIterator, BPTTBatcher, WindowSampler, pad_collate
from .corpus import Document, Splits, join_documents, normalize_text, stdlib_corpus, stdlib_documents
from .files import read_examples, read_text
from .synthetic import (COPY_BLANK, COPY_DELIMITER, COPY_VOCAB, adding_baseline, adding_problem, copy_memory,
                        copy_memory_baseline)
from .tasks import TASKS, Task, load_task
from .vocab import EOS, PAD, SOS, SPECIALS, UNK, Labels, Vocab

__all__ = [
    "KINDS", "SPLITS", "DataError", "DataWarning", "split_of",
    "BatchIterator", "BPTTBatcher", "WindowSampler", "pad_collate",
    "Document", "Splits", "join_documents", "normalize_text", "stdlib_corpus", "stdlib_documents",
    "read_examples", "read_text",
    "COPY_BLANK", "COPY_DELIMITER", "COPY_VOCAB", "adding_baseline", "adding_problem", "copy_memory",
    "copy_memory_baseline",
    "TASKS", "Task", "load_task",
    "EOS", "PAD", "SOS", "SPECIALS", "UNK", "Labels", "Vocab",
]
