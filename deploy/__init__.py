"""Scale-out of the served detector: local multi-replica cluster (``deploy.cluster``), per-replica spread and
1-vs-N throughput report (``deploy.spread``), and Kubernetes manifests (``deploy/kubernetes``)."""
