"""Running servers, shared by the single-server launcher and the cluster (``deploy.cluster``).

``procfs``: process facts from /proc. ``process``: start in a session, stop a process group, log tail, ports.
``admin``: Triton's HTTP endpoint (health, model control, statistics). ``health``: the fall/rise tracker.
``tritonserver``: the command line and ``TritonServer``. ``watchdog``: health checks and recovery in a thread.
``launcher``: the command line, ``python -m serving.launcher``.
"""
