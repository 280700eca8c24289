"""The training engine: configuration (`config`), inputs (`inputs.prepare_inputs`), the DeepSpeed loop
(`loop.run_training`), probe evaluation (`evaluate`). `injection run` is `run_training(cfg, prepare_inputs(cfg))`
with `cfg = load_config(...)`."""
