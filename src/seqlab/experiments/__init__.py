"""Experiments that test the textbook claims about sequence models, and the report they produce.

==================  =========================================================================
module              what lives there
==================  =========================================================================
tasks               memory-task models (rnn, lstm, gru, causal transformer) matched in
                    parameter count; time-budgeted training on copy memory / adding
gradflow            ||dL/dh_t|| against the distance T - t; spectral rescaling of W_hh
speed               training tokens/s, inference latency per token, activation memory vs length
gates               LSTM forget-gate and GRU update-gate statistics over time (record_gates)
lm                  character-level LM (seqlab.models.LanguageModel): bits per char vs time
report              report.md and self-contained report.html; the claims as data (``Claim``,
                    one function each in ``CLAIMS``), judged from the numbers
sections            the report's evidence sections, one function each (memory, gradient flow, ...)
document            the report's document model (Markdown / HTML) and shared accessors
compare             the grid of cells, resumable results.json, ``seqlab compare``
explain             ``seqlab explain``: colour text by a recurrent unit's activation or gate
cli                 add_compare_parser / add_explain_parser for the ``seqlab`` command
==================  =========================================================================

Everything is imported lazily by the command, so ``import seqlab.experiments`` costs nothing.
"""

# The grid's names, here (torch-free) so that the ``seqlab`` parser lists them without importing torch
ARCHS = ("rnn", "lstm", "gru", "transformer")
SECTIONS = ("copy", "adding", "ablation", "gradflow", "speed", "gates", "lm")
