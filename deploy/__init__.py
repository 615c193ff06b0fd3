"""Scale-out of the served detector: local multi-replica cluster (``deploy.cluster``) and Kubernetes manifests
(``deploy/kubernetes``). The per-replica spread and 1-vs-N throughput report is a benchmark: ``benchmarks.spread``."""
