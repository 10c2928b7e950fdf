"""train: the trainer (WSD/cosine schedules, cooldowns from checkpoints, weight averaging, data
parallel, wall-clock budgets).

Library API used by bench: `train.config.TrainConfig`, `train.data.get_data`, `train.data.Sampler`,
`train.optim.optimizer_for` / `build_optimizer`, `train.step.train_step` (returns device tensors),
`train.step.evaluate`, `train.schedules.lr_factor`, `train.timebudget.plan_total_steps`.
"""
