"""train: the trainer (WSD/cosine schedules, cooldowns from checkpoints, weight averaging, DDP).

Library API used by bench: `train.data.get_data`, `train.data.Sampler`,
`train.optim.build_optimizer`,
`train.step.train_step`, `train.step.evaluate`, `train.schedules.lr_factor`.
"""
