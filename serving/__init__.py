"""Running servers: what the single-server launcher (``triton_repo.server``) and the cluster (``deploy.cluster``)
share. ``serving.procfs``: process facts from /proc (children, state, memory, CPU time, command line)."""
