"""The learned codec's offline tools: ``fpnlink codec {extract,train,export,eval}``.

- ``images``: image sources (folder, COCO json, ``synth:N[:SEED[:SIZE]]``).
- ``shards``: extracting P2..P5 into fp16 feature shards, and loading them back.
- ``train``: training the variable-rate model.
- ``evaluate``: RD points, BD-rate against ``quant``, the RD table and plot.
- ``crosscheck``: encode here, decode in another process with another thread count.
- ``export``: the checkpoint that ships (no optimiser state, optionally half precision).
- ``cli``: the ``fpnlink codec`` subcommands.
"""
