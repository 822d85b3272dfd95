"""Training: the loop (short: its periodic actions are hooks, hooks.py and periodic.py), the jitted train
and eval steps, the train state as a pytree, the optimizer, multi-stage schedules, and growth (a trained
state made deeper, wider and with more parameter tokens).

It sits on top of the model, the runtime (mesh, processes) and the checkpoint store; nothing below it
imports it.
"""
