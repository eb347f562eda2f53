"""The time loops of seqlab's recurrent layers: one layer, one direction, over a whole sequence.

The layers (``seqlab.nn``) own parameters and layout; these modules own the loops, and
``dispatch`` alone chooses which runs (``module.last_dispatch`` says which and why).

==============  =============================================================================
module          what lives there
==============  =============================================================================
common          the contract of the RNN / LSTM / GRU kernels: equations, weights, masks, results
reference       their reference loop, the specification every other path is tested against
fused           hand-written backpropagation through time in torch ops
compiled        the forward and backward loops as one C++ extension (csrc/), built on first use;
                also the compiled minGRU / minLSTM scan
triton_rnn      the loops as Triton GPU kernels
native          torch's own fused kernels (oneDNN, cuDNN) over a whole plain stack
minrnn_scan     the minGRU / minLSTM paths in torch ops: the step loop (their specification),
                the log-space scan, the chunked linear scan
dispatch        the one place a path is chosen, for both families
csrc/           the C++ of the compiled path: products, buffer pool, cells, the minRNN scan
==============  =============================================================================
"""
