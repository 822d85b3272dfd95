"""Training: the loop, the jitted train step, the train state as a pytree, the optimizer, multi-stage
schedules, and growth (a trained state made deeper, wider and with more parameter tokens).

It sits on top of the model, the runtime (mesh, processes) and the checkpoint store; nothing below it
imports it.
"""
