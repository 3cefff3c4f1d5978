"""avremix trainer: models, the remix batch sampler, the shard reader, Data Remixing scoring, training, evaluation.

- :mod:`train.models`    ResNet-18 encoders (torchvision blocks), unimodal heads, the model around a fusion head
- :mod:`train.fusions`   the fusions (late heads and intermediate models), one file each; ``build_model`` by name
- :mod:`train.sampler`   :class:`RemixBatchSampler`: modality-pure batches from windows of shards, from metadata
- :mod:`train.data`      :class:`ShardDataset`: seek-based reads from the shards, transforms, loaders
- :mod:`train.config`    :class:`TrainConfig`, the ``train`` params
- :mod:`train.methods`   every method, one file each (``remix.py``: Data Remixing's scoring, assignment, scores file)
- :mod:`train.losses`    the losses of joint training and of Data Remixing
- :mod:`train.inference` device, autocast, whole-split prediction, accuracies, imbalance ratio
- :mod:`train.checkpoint` resume state, RNG states, the work folder and its publishing
- :mod:`train.diagnostics` the Fig. 3c gradient angle
- :mod:`train.trainer`   one training loop for every method
- :mod:`train.evaluate`  test metrics of a selected checkpoint
- :mod:`train.report`    the comparison table ``make demo`` prints
"""
