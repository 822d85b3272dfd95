"""Runtime: where a program runs. The mesh and the logical-axis shardings, the multi-process runtime and
its peers, the platform choice, preemption and Ctrl-C, the workdir lock, and ahead-of-time compiles for
TPU and GPU topologies on a machine without them.
"""
