"""avremix trainer: models, the remix batch sampler, the shard reader, Data Remixing scoring, training, evaluation.

- :mod:`train.models`    ResNet-18 encoders (torchvision blocks), unimodal heads, the model around a fusion head
- :mod:`train.fusions`   the fusions (late heads and intermediate models), one file each; ``build_model`` by name
- :mod:`train.sampler`   :class:`RemixBatchSampler`: modality-pure, shard-local batches from metadata
- :mod:`train.data`      :class:`ShardDataset`: seek-based reads from the shards, transforms, loaders
- :mod:`train.remix`     KL-to-uniform scoring, weakest-modality assignment, the scores file
- :mod:`train.trainer`   one training loop for every method (baseline, remix, only_<modality>)
- :mod:`train.evaluate`  test metrics of a selected checkpoint
- :mod:`train.report`    the comparison table ``make demo`` prints
"""
