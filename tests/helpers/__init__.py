"""What the tests build, importable by every test file: configs (the real Hydra config, small runs), runs shared
by a session, the in-process command, replayable randomness, float32 error bounds, the suite's time budget."""
