"""Everything that runs the engine in ``pruning/``: the table launchers, benchmarks, reports and
GPU check (each a script), the run machinery every command line shares (``runner/``) and the
two-layer experiments (``two_layer/``)."""
