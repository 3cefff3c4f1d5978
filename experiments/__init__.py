"""The paper's experiments as DVC experiments: :mod:`experiments.grid` queues and runs a grid of
(method, fusion, seed) runs, :mod:`experiments.tuning` tunes every method on validation first; the runs are read
by :mod:`experiments.records`, grouped into cells by :mod:`experiments.cells`, laid out as Tables 1-6 by
:mod:`experiments.tables` beside the paper's numbers (:mod:`experiments.reference`, :mod:`experiments.paper_rows`)
and rendered by :mod:`experiments.render`; :mod:`experiments.figure3` draws Figure 3. :mod:`experiments.show`
prints every run as one compact table; :mod:`experiments.plots` draws the workspace's runs, offline."""
