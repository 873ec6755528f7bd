"""The orchestration of a run, one module per responsibility:

- network: build the simulated network (dataset, partition, solver plan, nodes, communicator, groups) from a
  FreshStart or a RestoredStart;
- lockstep: the lockstep groups that fit the device (sim.lockstep=auto measures one training step per kind of node);
- records: the per-round metrics rows and the numerical guard;
- loop: the round loop and its hooks (checkpoint cadence and Ctrl-C, periodic evaluation, progress);
- finish: the final checkpoint, evaluation, figures and summary;
- runs: reading a run directory back (shared by `resume=` and `semdl eval`).
"""
