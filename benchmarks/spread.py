"""Where the balancer sent the calls, and what N replicas bring over one, measured in one run.

Each replica's share is read from that replica's own Triton statistics (success and inference counts of the
ensemble), asked directly at the replica's address, not through the balancer. The comparison runs the same
closed-loop load (``benchmarks.loadgen``) through the same balancer twice: with one replica in nginx's pool (the
others marked ``down``), then with all of them; the machine's CPU use during each level is reported beside it,
since replicas on one machine share its cores.

Examples::

    python -m benchmarks.spread --model-repository artifacts/repository/cpu --replicas 2      # starts a cluster
    python -m benchmarks.spread --url 127.0.0.1:8001 --replica-urls 198.18.37.10:8001,198.18.37.11:8001
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fmdetect.benchmarks.backends import MODEL, Protocol, TritonSender, replica_statistics
from fmdetect.benchmarks.loadgen import WindowPolicy, closed_loop_async, latency_summary_ms
from fmdetect.serving import procfs

logger = logging.getLogger(__name__)


def replica_counts(urls: list[str], model: str = MODEL) -> dict[str, dict[str, int]]:
    """Per replica gRPC URL: ``requests`` (successful) and ``inferences`` of ``model``, from its own statistics."""
    return {
        url: {
            "requests": stats.get(model, {}).get("success_count", 0),
            "inferences": stats.get(model, {}).get("inference_count", 0),
        }
        for url, stats in replica_statistics(urls).items()
    }


def counts_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {url: {k: v - before.get(url, {}).get(k, 0) for k, v in now.items()} for url, now in after.items()}


def settled_delta(
    urls: list[str],
    before: dict[str, dict[str, int]],
    model: str = MODEL,
    at_least: int = 0,
    timeout_s: float = 5.0,
    interval_s: float = 0.05,
) -> dict[str, dict[str, int]]:
    """The replicas' counts since ``before``, read once they have settled.

    A server records a request's statistics just after it sends the response, so a read made right after the
    last answer can miss the last few. Reads repeat until the answered total is at least ``at_least`` and two
    reads ``interval_s`` apart agree, or ``timeout_s`` passes (then the last read is returned as it is).
    """
    deadline = time.monotonic() + timeout_s
    delta = counts_delta(before, replica_counts(urls, model))
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        again = counts_delta(before, replica_counts(urls, model))
        if again == delta and sum(c["requests"] for c in delta.values()) >= at_least:
            break
        delta = again
    return delta


@dataclass
class SpreadResult:
    """Calls sent through the balancer, and how many each replica answered."""

    sent: int
    errors: int
    per_replica: dict[str, dict[str, int]]

    @property
    def answered(self) -> int:
        return sum(c["requests"] for c in self.per_replica.values())


def spread(
    balancer_url: str,
    replica_urls: list[str],
    payloads: list[bytes],
    requests: int = 100,
    concurrency: int = 4,
    model: str = MODEL,
) -> SpreadResult:
    """Send ``requests`` calls through the balancer and count, at each replica, how many it answered."""
    sender = TritonSender(balancer_url, Protocol.GRPC, payloads, model=model)
    before = replica_counts(replica_urls, model)
    errors = 0
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(sender, i) for i in range(requests)]:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - counted and reported, the rest go on
                errors += 1
                logger.warning("request failed: %s", exc)
    return SpreadResult(requests, errors, settled_delta(replica_urls, before, model, at_least=requests - errors))


@dataclass
class ScalingRow:
    """One closed-loop level through the balancer with ``replicas`` replicas in the pool."""

    replicas: int
    concurrency: int
    throughput_rps: float
    latency_ms: dict[str, float]
    errors: int
    cpu_busy: float  # fraction of all cores busy during the level (whole machine, other work included)
    server_cpu_ms_per_request: float  # CPU time of the replicas' processes (stubs included) per answered call
    per_replica: dict[str, dict[str, int]] = field(default_factory=dict)
    round: int = 0


def measure_level(
    balancer_url: str,
    replica_urls: list[str],
    payloads: list[bytes],
    concurrency: int,
    policy: WindowPolicy,
    replicas: int,
    server_pids: list[int],
    model: str = MODEL,
) -> ScalingRow:
    """One closed-loop level through the balancer, with the machine's and the servers' CPU use over it."""
    sender = TritonSender(balancer_url, Protocol.GRPC, payloads, model=model)
    before, cpu_before, server_before = (
        replica_counts(replica_urls, model),
        procfs.machine_cpu_jiffies(),
        procfs.tree_cpu_seconds(server_pids),
    )
    level = closed_loop_async(sender.start, concurrency, policy)
    server_after, cpu_after = procfs.tree_cpu_seconds(server_pids), procfs.machine_cpu_jiffies()
    delta = settled_delta(replica_urls, before, model)
    busy = (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1])
    answered = sum(c["requests"] for c in delta.values())
    per_request_ms = (server_after - server_before) / answered * 1e3 if answered else float("nan")
    s = level.samples
    return ScalingRow(
        replicas, concurrency, s.throughput_rps, latency_summary_ms(s.latencies), s.errors, busy, per_request_ms, delta
    )


def scaling(
    cluster, payloads: list[bytes], concurrency: list[int], policy: WindowPolicy, rounds: int = 1, model: str = MODEL
) -> list[ScalingRow]:
    """The same load through ``cluster``'s balancer with 1 replica in the pool, then all of them.

    Args:
        cluster: a started ``deploy.cluster.Cluster``; its pool is restored to every replica afterwards.
        rounds: repeat the 1-then-N pair; interleaving keeps a drift in the machine's other load from
            favouring one side (``format_scaling`` compares medians).
    """
    everyone = {r.index for r in cluster.replicas}
    urls = [r.grpc_url for r in cluster.replicas]
    rows = []
    try:
        for round_ in range(rounds):
            for count in sorted({1, len(everyone)}):
                cluster.use(set(range(count)))
                cluster.wait_for_pool(set(range(count)), timeout_s=30)
                time.sleep(0.5)  # nginx's reload: new workers take the new calls
                pids = [r.server.pid for r in cluster.replicas if r.running]
                for level in concurrency:
                    row = measure_level(cluster.grpc_url, urls, payloads, level, policy, count, pids, model)
                    row.round = round_
                    rows.append(row)
                    logger.info("%d replica(s), concurrency %d: %.1f req/s", count, level, row.throughput_rps)
    finally:
        cluster.use(everyone)
    return rows


def format_spread(result: SpreadResult) -> str:
    lines = [
        f"{result.sent} calls through the balancer, {result.errors} failed; answered per replica (its own statistics):"
    ]
    for url, counts in result.per_replica.items():
        share = counts["requests"] / result.answered if result.answered else 0.0
        lines.append(f"  {url:<22} {counts['requests']:6d} requests {counts['inferences']:6d} inferences ({share:.0%})")
    return "\n".join(lines)


def format_scaling(rows: list[ScalingRow]) -> str:
    lines = [
        f"{'round':>5} {'replicas':>8} {'conc':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'CPU busy':>8} {'server CPU ms/req':>17}  requests per replica"
    ]
    for r in rows:
        shares = ", ".join(f"{url} {c['requests']}" for url, c in r.per_replica.items())
        lines.append(
            f"{r.round:>5} {r.replicas:>8} {r.concurrency:>5} {r.throughput_rps:8.1f} "
            f"{r.latency_ms['p50']:8.1f} {r.latency_ms['p99']:8.1f} {r.errors:>6} {r.cpu_busy:8.0%} "
            f"{r.server_cpu_ms_per_request:17.1f}  {shares}"
        )
    by_level: dict[int, dict[int, list[ScalingRow]]] = {}
    for r in rows:
        by_level.setdefault(r.concurrency, {}).setdefault(r.replicas, []).append(r)
    for level, by_count in sorted(by_level.items()):
        if len(by_count) != 2 or 1 not in by_count:
            continue
        n = max(by_count)
        rate = {k: statistics.median(r.throughput_rps for r in v) for k, v in by_count.items()}
        cpu = {k: statistics.median(r.server_cpu_ms_per_request for r in v) for k, v in by_count.items()}
        if rate[1] > 0:
            lines.append(
                f"concurrency {level}: {n} replicas / 1 replica = {rate[n] / rate[1]:.2f}x throughput, "
                f"{cpu[n] / cpu[1]:.2f}x server CPU per request (medians of {len(by_count[1])} round(s))"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="start a local cluster of this repository and compare 1 vs N replicas",
    )
    p.add_argument("--replicas", type=int, default=2, help="replicas of the cluster started here")
    p.add_argument("--url", default=None, help="an existing balancer's gRPC host:port (spread only)")
    p.add_argument(
        "--replica-urls", default="", help="the existing cluster's replicas, gRPC host:port, comma-separated"
    )
    p.add_argument("--requests", type=int, default=200, help="calls sent for the spread count")
    p.add_argument("--concurrency", default="4", help="closed-loop levels of the 1-vs-N comparison, comma-separated")
    p.add_argument("--window", type=float, default=2.0, help="seconds per measurement window")
    p.add_argument("--max-windows", type=int, default=6, help="most windows per level")
    p.add_argument("--rounds", type=int, default=1, help="repeat the 1-vs-N pair (medians are compared)")
    p.add_argument("--image-size", type=int, default=256, help="side of the generated JPEG images")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from fmdetect.benchmarks.payloads import square

    payloads = [p.data for p in square(32, args.image_size, "jpeg")]
    policy = WindowPolicy(window_s=args.window, warmup_s=1.0, max_windows=args.max_windows)
    levels = [int(v) for v in args.concurrency.split(",") if v.strip()]
    report: dict = {"machine": f"{os.cpu_count()} CPU cores"}
    if args.model_repository is not None:
        from fmdetect.deploy.cluster import Cluster, ClusterConfig, ClusterError, describe
        from fmdetect.serving.process import free_port

        try:
            cluster = Cluster(
                ClusterConfig(model_repository=args.model_repository, replicas=args.replicas, port=free_port())
            )
            cluster.start()
        except ClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            print(describe(cluster), flush=True)
            urls = [r.grpc_url for r in cluster.replicas]
            result = spread(cluster.grpc_url, urls, payloads, args.requests)
            print("\n" + format_spread(result), flush=True)
            load_before = os.getloadavg()[0]
            rows = scaling(cluster, payloads, levels, policy, rounds=args.rounds)
            print("\n" + format_scaling(rows), flush=True)
            print(
                f"machine: {os.cpu_count()} cores; 1-minute load average {load_before:.1f} before the comparison, "
                f"{os.getloadavg()[0]:.1f} after (other work on the machine competes with the replicas)"
            )
            report.update(load_average=[load_before, os.getloadavg()[0]])
            report.update(network=cluster.network_note, spread=asdict(result), scaling=[asdict(r) for r in rows])
        finally:
            cluster.stop()
    else:
        urls = [u.strip() for u in args.replica_urls.split(",") if u.strip()]
        if not args.url or not urls:
            parser.error("give --model-repository, or --url and --replica-urls of a running cluster")
        result = spread(args.url, urls, payloads, args.requests)
        print(format_spread(result))
        report.update(spread=asdict(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
