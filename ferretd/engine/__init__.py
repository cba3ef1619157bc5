"""Training engine: the learner interface, plans, schedules, weight versions, stages, executors."""
