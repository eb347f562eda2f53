"""The recurrence kernels: one layer, one direction, forward in time, on several interchangeable paths.

The layers of ``seqlab.nn`` (the one driver in nn/_driver.py) do layout, packing, directions,
stacking and masks, then ask ``dispatch.choose`` (``choose_min`` for minGRU / minLSTM) for a path
and call it with the contract of ``common.py``. Data flows
down this map:

==================  ===========================================================================
module              what lives there
==================  ===========================================================================
common              the contract (equations, symbols, ``LayerWeights``, ``Masks``,
                    ``LayerResult``) and the shell every fast path shares: the checks, the
                    input projection with b_hh folded in, recording, the outputs, the start of
                    the backward and the weight gradients after the loop, the cell ids
dispatch            the one place a path is chosen; ``Dispatch`` says which ran and why a
                    faster one was refused
reference           the cell equations as a plain loop, differentiated by autograd: the
                    specification every path is tested against, and the route of second
                    derivatives for all of them
fused               the time loop in Python with ``out=`` buffers and a hand-written backward
compiled            the time loop as C++ ops (built on first use): an ``autograd.Function``
                    in eager calls, custom ops (fake kernels, registered autograd) under
                    torch.compile; the minGRU / minLSTM loop as one custom op for both
csrc/               that C++: recurrent.cpp registers the ops and includes one header per job
                    (pointwise math, per-cell steps, buffer pool, products, forward, backward,
                    minRNN scan; the map is at the top of recurrent.cpp)
triton_rnn          the time loop as Triton kernels (CUDA; on the CPU under TRITON_INTERPRET=1)
native              torch's own kernels (oneDNN, cuDNN) for plain layers, the whole stack at once
minrnn_scan         the minGRU / minLSTM recurrence h_t = a_t ⊙ h_{t-1} + b_t: the step loop
                    (their specification), the log-space scan and the chunked scan
_testing            switches for the tests and benchmarks only (product paths, custom-op route,
                    build attempt); not part of the API
==================  ===========================================================================

A fast path (fused, compiled, triton_rnn) is ``supports`` (None or why not) plus its loop in an
``autograd.Function``; its ``run_layer`` is ``common.fast_run_layer`` around them. Fast paths
are imported lazily by dispatch, so a broken one never stops the reference loop.
"""
