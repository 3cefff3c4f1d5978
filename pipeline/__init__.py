"""avremix data pipeline: raw clips -> manifests -> indexed WebDataset feature shards.

Modules by concern (as Lhotse splits them):

- :mod:`pipeline.manifest`  clip records and manifest files
- :mod:`pipeline.splits`    split files and seeded stratified splits
- :mod:`pipeline.datasets`  dataset adapters (CREMA-D, Kinetics-Sounds, CSV; one file each) -> manifests
- :mod:`pipeline.synth`     the embedded default dataset (real encoded clips)
- :mod:`pipeline.media`     decoding: video frames (decord), audio (ffmpeg)
- :mod:`pipeline.features`  typed feature settings, frame and log-mel computation
- :mod:`pipeline.shards`    paired ShardWriter/IndexWriter and IndexReader
- :mod:`pipeline.extract`   the parallel, partitionable, deterministic extraction
- :mod:`pipeline.params`    the one config mechanism: typed sections of params.yaml, each key's rule declared once
- :mod:`pipeline.check`     the check stage: every section of params.yaml and the dataset it names, first
- :mod:`pipeline.inputs`    prepare's links to the files it read outside prepare.root, for DVC to hash
- :mod:`pipeline.lifetime`  a stage and all it starts die with the dvc process that runs it
"""
