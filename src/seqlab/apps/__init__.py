"""Applications: one per kind of task, the glue between data, models, trainer, metrics and decoding.

==========  =============  ======================================  ==============================
kind        default task   evaluation                               inference
==========  =============  ======================================  ==============================
lm          stdlib         loss, perplexity, bits per character    sample text from a prompt
classify    langid         accuracy, macro-F1                      classify texts
tag         ner            token accuracy, entity F1               tag words
seq2seq     dates          exact match, CER, BLEU (greedy / beam)  translate
generate    names          loss, perplexity, <eos> fraction        generate for a condition
==========  =============  ======================================  ==============================

:func:`train_run` trains one into a run directory and :func:`load_run` rebuilds it from there;
``seqlab train`` / ``sample`` / ``translate`` / ``classify`` / ``tag`` / ``generate`` / ``eval``
are thin wrappers around them.
"""
from .base import App, Batches, ConfigError, DataOptions, parse_overrides, parse_value, read_config_file
from .classify import ClassifyApp
from .generate import GenerateApp, GenerateOptions
from .lm import LMApp, LMOptions
from .runs import APPS, Run, app_class, load_run, setting_keys, train_run
from .seq2seq import Seq2SeqApp, Seq2SeqOptions
from .tag import TagApp, TagOptions

__all__ = [
    "App", "Batches", "ConfigError", "DataOptions", "parse_overrides", "parse_value", "read_config_file",
    "ClassifyApp", "GenerateApp", "GenerateOptions", "LMApp", "LMOptions", "Seq2SeqApp", "Seq2SeqOptions",
    "TagApp", "TagOptions", "APPS", "Run", "app_class", "load_run", "setting_keys", "train_run",
]
