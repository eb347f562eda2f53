"""The recurrence kernels: one layer, one direction, forward in time, on several interchangeable paths.

The layers of ``seqlab.nn`` (the one driver in nn/_driver.py) do layout, packing, directions,
stacking and masks, then ask ``dispatch.choose`` (``choose_min`` for minGRU / minLSTM) for a path
and call it with the contract of ``common.py``. Data flows
down this map:

==================  ===================================================================="""
